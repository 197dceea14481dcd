"""Pre-flight decision logic with scripted nodes and per-node answers, the probe on real files, the whole
check against the session's one-node Ray, and the memory check with scripted memory plans and cards. The real
two-node checks are in test_cluster.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.raytune.preflight import (
    RUN_FOLDER,
    NodeInfo,
    check_memory,
    fitting_nodes,
    local_dir,
    node_info,
    preflight,
    probe_node,
    verdict,
    write_marker,
)
from sensorium.errors import ConfigError, UserError

HEAD = NodeInfo("a" * 56, "10.0.0.1", cpus=8, gpus=0)
GPU = NodeInfo("b" * 56, "10.0.0.2", cpus=4, gpus=2)


def test_node_info_reads_a_ray_nodes_entry():
    raw = {"NodeID": "c" * 56, "Alive": True, "NodeManagerAddress": "10.0.0.3",
           "Resources": {"CPU": 16.0, "GPU": 1.0, "memory": 1e9}}
    assert node_info(raw) == NodeInfo("c" * 56, "10.0.0.3", 16.0, 1.0)
    assert node_info({"NodeID": "d" * 56, "Resources": {}}).cpus == 0.0


@pytest.mark.parametrize(
    ("cpus", "gpus", "expected"),
    [(1, 0, [HEAD, GPU]), (6, 0, [HEAD]), (2, 0.25, [GPU]), (4, 2, [GPU])],
)
def test_fitting_nodes_keeps_the_nodes_one_trial_fits_on(cpus, gpus, expected):
    assert fitting_nodes([HEAD, GPU], cpus, gpus) == expected


def test_impossible_resources_name_the_request_and_every_node():
    with pytest.raises(UserError) as err:
        fitting_nodes([HEAD, GPU], 64, 0)
    message = str(err.value)
    assert "CPU 64 GPU 0" in message
    assert "10.0.0.1 (aaaaaaaa): CPU 8 GPU 0" in message and "10.0.0.2 (bbbbbbbb): CPU 4 GPU 2" in message
    assert "\n" not in message
    with pytest.raises(UserError, match="GPU 3"):
        fitting_nodes([HEAD, GPU], 1, 3)
    with pytest.raises(UserError, match="whole number"):
        fitting_nodes([HEAD, GPU], 1, 1.5)
    with pytest.raises(UserError, match="no alive node"):
        fitting_nodes([], 1, 0)


def test_local_dir_accepts_paths_and_remote_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert local_dir("runs/a") == tmp_path / "runs" / "a"
    assert local_dir(f"file://{tmp_path}/b") == tmp_path / "b"
    assert local_dir("s3://bucket/runs") is None
    assert local_dir("gs://bucket/runs") is None
    with pytest.raises(UserError, match="'ftp' is not supported"):
        local_dir("ftp://host/runs")


def test_probe_sees_the_marker_and_the_data(tmp_path):
    marker, token = write_marker(tmp_path / "run")
    data = tmp_path / "scan"
    data.mkdir()
    assert probe_node(str(marker), token, [str(data)]) == {}
    assert probe_node(str(marker), "another-token", []) == {RUN_FOLDER: "a different file is at the marker's path"}
    marker.unlink()
    gone = str(tmp_path / "nope")
    assert probe_node(str(marker), token, [gone]) == {
        RUN_FOLDER: "the driver's marker file is missing there",
        gone: "missing",
    }


def test_verdict_names_the_nodes_that_cannot_see_the_run_folder():
    answers = {HEAD: {}, GPU: {RUN_FOLDER: "the driver's marker file is missing there"}}
    with pytest.raises(UserError) as err:
        verdict(answers, "/scratch/run", [])
    message = str(err.value)
    assert message.startswith("run folder /scratch/run is not visible from node(s) 10.0.0.2 (bbbbbbbb)")
    assert "10.0.0.1" not in message and "s3://" in message


def test_verdict_names_unreadable_data_per_node_after_the_run_folder():
    answers = {HEAD: {"/data/scan": "not readable"}, GPU: {"/data/scan": "missing"}}
    with pytest.raises(UserError) as err:
        verdict(answers, "/shared/run", ["/data/ok", "/data/scan"])
    message = str(err.value)
    assert "data /data/scan is not readable on node(s) 10.0.0.1 (aaaaaaaa) (not readable), " \
           "10.0.0.2 (bbbbbbbb) (missing)" in message
    answers[GPU][RUN_FOLDER] = "the driver's marker file is missing there"
    with pytest.raises(UserError, match="^run folder"):
        verdict(answers, "/shared/run", ["/data/scan"])
    verdict({HEAD: {}, GPU: {}}, "/shared/run", ["/data/scan"])  # all visible: passes


def test_preflight_on_one_node_checks_locally(ray_session, tmp_path):
    data = tmp_path / "scan"
    data.mkdir()
    preflight(1, 0, str(tmp_path / "run"), [data])
    assert not (tmp_path / "run").exists()  # one node: no marker needed, nothing written
    with pytest.raises(UserError, match="a trial needs CPU 64 GPU 0 on one node"):
        preflight(64, 0, str(tmp_path / "run"), [data])
    with pytest.raises(UserError, match=r"GPU 0\.5"):
        preflight(1, 0.5, str(tmp_path / "run"), [data])
    with pytest.raises(UserError, match=f"data {tmp_path / 'missing'} is not readable on node"):
        preflight(1, 0, str(tmp_path / "run"), [Path(tmp_path / "missing")])


# ------------------------------------------------------------------------------ memory on a shared card
def _plan(base_gb: float, largest_gb: float):
    """A memory plan with these peaks (GB, the CUDA context included; the largest one's in final scoring)."""
    from search.spec.gpu_share import GB, MemoryPlan
    from sensorium.memory import CUDA_CONTEXT_BYTES, MemoryEstimate

    def est(gb: float, scoring: bool) -> MemoryEstimate:
        rest = int(gb * GB) - CUDA_CONTEXT_BYTES
        return MemoryEstimate(context=CUDA_CONTEXT_BYTES, data=0, state=0, activations=0 if scoring else rest,
                              scoring=rest if scoring else 0, eval_chunk=64, batch_size=128)
    return MemoryPlan(est(base_gb, False), est(largest_gb, True), {"model.core.layers": 6, "train.lr": 0.01}, 2)


def _card(gb: float):
    from search.spec.gpu_share import GB, Card

    return Card(int(gb * GB), "search.gpu_memory_gb")


def test_check_memory_prints_both_estimates_and_passes_when_the_largest_point_fits(capsys):
    check_memory(_plan(3.0, 17.0), 0.25, _card(80))  # 20 GB each
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 2 and not err
    assert lines[0].startswith("memory per trial, base config: train 2.79 GiB")
    assert lines[1].startswith("memory per trial, largest point of the space (model.core.layers=6; largest of 2 "
                               "compared): train 0.68 GiB") and "final scoring 15.83 GiB" in lines[1]


def test_check_memory_warns_when_only_the_largest_point_does_not_fit(capsys):
    check_memory(_plan(3.0, 17.0), 0.2, _card(80))  # 16 GB each
    err = capsys.readouterr().err
    assert err.startswith("warning: gpus_per_trial=0.2 gives each trial 16.0 GB of a 80.0 GB card, but the largest "
                          "point of the space needs 17.0 GB at its peak: trials near it will fail")
    assert err.count("\n") == 1


@pytest.mark.parametrize(("share", "card_gb", "message"), [
    (0.0625, 40, r"gpus_per_trial=0.0625 gives each trial 2.5 GB of a 40.0 GB card, but the base config needs "
                 r"3.0 GB at its peak; expected a larger share"),
    (0.01, 40, r"gpus_per_trial=0.01 gives each trial 0.4 GB of a 40.0 GB card, not even the 0.73 GB of its CUDA "
               r"context"),
    (1, 2.5, r"gpus_per_trial=1 gives each trial 2.5 GB of a 2.5 GB card, but the base config needs 3.0 GB"),
])
def test_check_memory_refuses_a_share_the_base_config_does_not_fit(share, card_gb, message):
    with pytest.raises(ConfigError, match=message):
        check_memory(_plan(3.0, 17.0), share, _card(card_gb))
