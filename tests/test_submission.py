"""Official submission CSVs: round trip, refusals, atomic writes, and id-aligned scoring."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from sensorium import metrics, submission
from sensorium.errors import UserError


def _table(seed: int = 0, n_trials: int = 24, n_neurons: int = 5, hashed: bool = False):
    """trial ids, image ids (6 images x 4 repeats), neuron ids, responses (T, n) float32."""
    rng = np.random.default_rng(seed)
    if hashed:
        trials = np.array([f"{x:032x}" for x in rng.integers(0, 2**62, n_trials)])
    else:
        trials = rng.permutation(n_trials) * 3 + 100
    images = np.repeat(np.arange(n_trials // 4), 4) + 1000
    neurons = rng.permutation(n_neurons) + 7
    signal = rng.normal(size=(n_trials // 4, n_neurons))[images - 1000]
    values = np.exp(signal + 0.3 * rng.normal(size=signal.shape)).astype(np.float32)
    return trials, images, neurons, values


@pytest.mark.parametrize("hashed", [False, True], ids=["int_ids", "hex_ids"])
def test_round_trip(tmp_path, hashed):
    trials, images, neurons, values = _table(hashed=hashed)
    path = submission.write_submission(tmp_path / "sub.csv", trials, images, neurons, values)
    got_trials, got_images, got_neurons, got_values = submission.read_submission(path)
    order = np.argsort(trials.astype(np.int64)) if not hashed else np.argsort(trials)
    np.testing.assert_array_equal(got_trials, np.asarray(trials).astype(str)[order])  # sorted by trial id
    np.testing.assert_array_equal(got_images, images[order])
    np.testing.assert_array_equal(got_neurons, neurons)
    np.testing.assert_array_equal(got_values.astype(np.float32), values[order])  # float32 exact


def test_official_columns_and_list_literals(tmp_path):
    trials, images, neurons, values = _table()
    path = submission.write_submission(tmp_path / "gt.csv", trials, images, neurons, values, column="responses")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["trial_indices", "image_ids", "responses", "neuron_ids"]
    assert rows[1][0] == "100"  # smallest trial id first
    assert rows[1][3] == "[" + ", ".join(str(n) for n in neurons) + "]"
    assert eval(rows[1][2], {}) == pytest.approx(values[np.argmin(trials)].tolist())  # a Python list literal
    assert submission.read_submission(path, column="responses")[3].shape == values.shape


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t, i, n, v: (t[:-1], i, n, v), "23 trial ids"),
        (lambda t, i, n, v: (t, i[:-2], n, v), "22 image ids"),
        (lambda t, i, n, v: (t, i, n[:-1], v), "4 neuron ids"),
        (lambda t, i, n, v: (np.r_[t[:-1], t[0]], i, n, v), "1 duplicate trial ids"),
        (lambda t, i, n, v: (t, i, np.r_[n[:-1], n[0]], v), "1 duplicate neuron ids"),
        (lambda t, i, n, v: (t, i, n, np.where(np.arange(5) == 2, np.nan, v)), "24 non-finite prediction values"),
        (lambda t, i, n, v: (t, i, n, v[:0]), "non-empty"),
    ],
    ids=["missing_trial", "missing_image", "missing_neuron", "dup_trial", "dup_neuron", "nan", "empty"],
)
def test_write_refuses_bad_tables(tmp_path, change, message):
    args = change(*_table())
    with pytest.raises(UserError, match=message):
        submission.write_submission(tmp_path / "sub.csv", *args)
    assert list(tmp_path.iterdir()) == []


def test_write_refuses_to_overwrite_unless_asked(tmp_path):
    trials, images, neurons, values = _table()
    path = submission.write_submission(tmp_path / "sub.csv", trials, images, neurons, values)
    with pytest.raises(UserError, match="overwrite"):
        submission.write_submission(path, trials, images, neurons, values * 2)
    np.testing.assert_array_equal(np.sort(submission.read_submission(path)[3].astype(np.float32), axis=0), np.sort(values, axis=0))
    submission.write_submission(path, trials, images, neurons, values * 2, overwrite=True)
    np.testing.assert_array_equal(np.sort(submission.read_submission(path)[3].astype(np.float32), axis=0), np.sort(values * 2, axis=0))


def test_failure_mid_write_leaves_no_file(tmp_path, monkeypatch):
    trials, images, neurons, values = _table()
    calls = []
    real = submission._format_values

    def crash_on_third_row(row):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return real(row)

    monkeypatch.setattr(submission, "_format_values", crash_on_third_row)
    with pytest.raises(RuntimeError, match="disk on fire"):
        submission.write_submission(tmp_path / "sub.csv", trials, images, neurons, values)
    assert list(tmp_path.iterdir()) == []


def test_failure_mid_overwrite_keeps_the_old_file(tmp_path, monkeypatch):
    trials, images, neurons, values = _table()
    path = submission.write_submission(tmp_path / "sub.csv", trials, images, neurons, values)
    before = path.read_bytes()
    monkeypatch.setattr(submission, "_format_values", lambda row: (_ for _ in ()).throw(OSError("no space")))
    with pytest.raises(OSError):
        submission.write_submission(path, trials, images, neurons, values * 2, overwrite=True)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["sub.csv"]


def _write_text(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "lines, message",
    [
        (["trial_indices,image_ids,prediction", '1,2,"[0.5]"'], "missing column.*neuron_ids"),
        (["trial_indices,image_ids,prediction,neuron_ids", '1,2,"[0.5, x]","[3, 4]"'], "line 2: column prediction"),
        (["trial_indices,image_ids,prediction,neuron_ids", '1,2,"[0.5]","[3, 4]"'], "line 2: 1 prediction values"),
        (["trial_indices,image_ids,prediction,neuron_ids", '1,2,"[0.5]","[3]"', '2,2,"[0.5]","[4]"'], "line 3: neuron_ids differ"),
        (["trial_indices,image_ids,prediction,neuron_ids", '1,2.5,"[0.5]","[3]"'], "image_ids is not an integer"),
        (["trial_indices,image_ids,prediction,neuron_ids", '1,2,"[nan]","[3]"'], "1 non-finite"),
        (["trial_indices,image_ids,prediction,neuron_ids", '1,2,"[1]","[3]"', '1,3,"[1]","[3]"'], "1 duplicate trial ids"),
        (["trial_indices,image_ids,prediction,neuron_ids"], "no rows"),
    ],
    ids=["missing_column", "bad_value", "short_row", "other_neurons", "bad_image", "nan", "dup_trial", "empty"],
)
def test_read_refuses_bad_files(tmp_path, lines, message):
    path = _write_text(tmp_path / "bad.csv", lines)
    with pytest.raises(UserError, match=message) as err:
        submission.read_submission(path)
    assert "bad.csv" in str(err.value)


def test_read_missing_file(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        submission.read_submission(tmp_path / "nope.csv")


def _pair(tmp_path, hashed=False):
    trials, images, neurons, resp = _table(seed=1, hashed=hashed)
    noise = np.random.default_rng(5).normal(scale=0.5, size=resp.shape)
    pred = (resp + noise).astype(np.float32)
    gt = submission.write_submission(tmp_path / "gt.csv", trials, images, neurons, resp, column="responses")
    return gt, (trials, images, neurons, pred), resp


@pytest.mark.parametrize("hashed", [False, True], ids=["int_ids", "hex_ids"])
def test_score_files_aligns_by_trial_and_neuron_id(tmp_path, hashed):
    gt, (trials, images, neurons, pred), resp = _pair(tmp_path, hashed)
    expected = metrics.score_all(pred.astype(np.float64), resp.astype(np.float64), images)
    sub = submission.write_submission(tmp_path / "sub.csv", trials, images, neurons, pred)
    assert submission.score_files(sub, gt) == pytest.approx(expected, abs=1e-6)

    # Shuffle neuron order and rewrite the rows in a random order by hand: same scores.
    rng = np.random.default_rng(9)
    rows, cols = rng.permutation(len(trials)), rng.permutation(len(neurons))
    shuffled = tmp_path / "shuffled.csv"
    with open(shuffled, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial_indices", "image_ids", "prediction", "neuron_ids"])
        for r in rows:
            writer.writerow([trials[r], images[r], str(pred[r, cols].tolist()), str(neurons[cols].tolist())])
    assert submission.score_files(shuffled, gt) == pytest.approx(expected, abs=1e-6)


def test_score_files_refuses_mismatched_ids(tmp_path):
    gt, (trials, images, neurons, pred), _ = _pair(tmp_path)
    fewer = submission.write_submission(tmp_path / "fewer.csv", trials[:-2], images[:-2], neurons, pred[:-2])
    with pytest.raises(UserError, match="2 trial ids missing"):
        submission.score_files(fewer, gt)
    other = neurons.copy()
    other[0] = 999
    renamed = submission.write_submission(tmp_path / "renamed.csv", trials, images, other, pred)
    with pytest.raises(UserError, match=r"1 neuron ids missing \(e.g. \d+\), 1 neuron ids extra \(e.g. 999\)"):
        submission.score_files(renamed, gt)
    shifted = submission.write_submission(tmp_path / "shifted.csv", trials, np.roll(images, 1), neurons, pred)
    with pytest.raises(UserError, match="other image ids"):
        submission.score_files(shifted, gt)


def test_evaluate_command(tmp_path, capsys):
    import json

    from sensorium.cli import main

    gt, (trials, images, neurons, pred), _ = _pair(tmp_path)
    sub = submission.write_submission(tmp_path / "sub.csv", trials, images, neurons, pred)
    out = tmp_path / "scores" / "scores.json"
    assert main(["evaluate", str(sub), str(gt), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    expected = submission.score_files(sub, gt)
    assert f"single_trial_correlation   {expected['single_trial_correlation']:.4f}" in printed
    record = json.loads(out.read_text())
    assert {k: record[k] for k in metrics.SCORE_NAMES} == pytest.approx(expected)


def test_evaluate_command_bad_input_exits_2_with_one_line(tmp_path, capsys):
    from sensorium.cli import main

    gt, (trials, images, neurons, pred), _ = _pair(tmp_path)
    fewer = submission.write_submission(tmp_path / "fewer.csv", trials[:-1], images[:-1], neurons, pred[:-1])
    assert main(["evaluate", str(fewer), str(gt)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1 trial ids missing" in err
    assert main(["evaluate", str(tmp_path / "nope.csv"), str(gt)]) == 2
    assert "no such file" in capsys.readouterr().err
    one = [submission.write_submission(tmp_path / f"one_{n}.csv", trials[:1], images[:1], neurons, pred[:1],
                                       column=c) for n, c in (("sub", "prediction"), ("gt", "responses"))]
    assert main(["evaluate", str(one[0]), str(one[1])]) == 2
    assert "scores need at least 2 trials and 1 neuron, got 1 trials" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- finding the ground truth
SCANS = ("26872-17-20", "27204-5-13")  # two competition scans: their trial ids are 32-hex hashes, disjoint


@pytest.fixture
def tiers():
    """(data key, tier) -> (trial ids (24,) str, image ids, neuron ids, responses (24, 5)) of two scans."""
    tables = {}
    for i, key in enumerate(SCANS):
        for j, tier in enumerate(("test", "final_test")):
            tables[key, tier] = _table(seed=10 * i + j, hashed=True)
    return tables


def _official(path, table):
    """A ground-truth CSV as the official kit's generate_ground_truth_file writes it (pandas, index=False)."""
    import pandas as pd

    trials, images, neurons, values = table
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"trial_indices": trials, "image_ids": images, "responses": values.tolist(),
                  "neuron_ids": [neurons.tolist()] * len(trials)}).to_csv(path, index=False)
    return path


def _ours(path, table):
    return submission.write_submission(path, *table, column="responses")


LAYOUTS = {  # name -> (data key, tier) -> (writer, path under the folder)
    "official_per_scan": lambda key, tier: (_official, f"static{key}-GrayImageNet-x/ground_truth_file_{tier}.csv"),
    "official_flat": lambda key, tier: (_official, f"{key}_ground_truth_file_{tier}.csv"),
    "ours": lambda key, tier: (_ours, f"{key}/{submission.GROUND_TRUTH_FILES[tier]}"),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ground_truth_is_matched_to_scan_and_tier_by_trial_ids_in_any_layout(tmp_path, tiers, layout):
    expected = {}
    for slot, table in tiers.items():
        write, rel = LAYOUTS[layout](*slot)
        expected[slot] = write(tmp_path / "gt" / rel, table)
    # neighbours that are no ground truth of these tiers: a submission, another scan's file, a note
    trials, images, neurons, values = _table(seed=99, hashed=True)
    submission.write_submission(tmp_path / "gt" / "sub" / "submission_file_live_test.csv", trials, images, neurons,
                                values)
    _ours(tmp_path / "gt" / "other" / "ground_truth_live_test.csv", (trials, images, neurons, values))
    (tmp_path / "gt" / "notes.csv").write_text("a,b\n1,2\n")

    found = submission.match_ground_truth(tmp_path / "gt", {slot: t[0] for slot, t in tiers.items()})
    assert found.files == expected and found.root == tmp_path / "gt"
    assert found.by_key() == {key: {tier: str(expected[key, tier]) for tier in ("test", "final_test")}
                              for key in SCANS}
    assert found.tried[tmp_path / "gt" / "notes.csv"] == "not a ground-truth file"
    assert found.tried[tmp_path / "gt" / "sub" / "submission_file_live_test.csv"] == "not a ground-truth file"
    assert "no scan's final_test/test tier" in found.tried[tmp_path / "gt" / "other" / "ground_truth_live_test.csv"]
    for slot, path in expected.items():  # and every match scores as the ground truth it is
        trials, images, neurons, values = tiers[slot]
        sub = submission.write_submission(tmp_path / "s.csv", trials, images, neurons, values, overwrite=True)
        assert submission.score_files(sub, path)["single_trial_correlation"] == pytest.approx(1.0, abs=1e-6)


def test_ground_truth_ids_match_as_strings_and_the_first_copy_wins(tmp_path):
    trials, images, neurons, values = _table(seed=3)  # integer trial ids, as a pre-training scan's
    first = _official(tmp_path / "a" / "ground_truth_file_test.csv", (trials, images, neurons, values))
    _ours(tmp_path / "b" / "ground_truth_live_test.csv", (trials, images, neurons, values))
    found = submission.match_ground_truth(tmp_path, {("1-2-3", "test"): trials})  # ints vs the file's text
    assert found.files == {("1-2-3", "test"): first}
    assert found.tried[tmp_path / "b" / "ground_truth_live_test.csv"] == f"the same trials as {first}"
    partial = submission.match_ground_truth(tmp_path, {("1-2-3", "test"): trials[:-1]})  # a subset is no match
    assert partial.files == {}


def test_a_folder_matching_nothing_names_every_file_tried(tmp_path, tiers):
    trials, images, neurons, values = _table(seed=99, hashed=True)
    wrong = _official(tmp_path / "gt" / "ground_truth_file_test.csv", (trials, images, neurons, values))
    sub = submission.write_submission(tmp_path / "gt" / "x" / "submission_file_live_test.csv", trials, images,
                                      neurons, values)
    found = submission.match_ground_truth(tmp_path / "gt", {slot: t[0] for slot, t in tiers.items()})
    assert found.files == {} and list(found.tried) == [wrong, sub]
    text = found.tried_text()
    assert text.startswith("tried ") and str(wrong) in text and str(sub) in text and "\n" not in text
    assert "24 trials, those of no scan's final_test/test tier" in text and "not a ground-truth file" in text
    assert submission.match_ground_truth(tmp_path / "empty", {}).tried_text() == "no *.csv file there"
