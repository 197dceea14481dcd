"""Security defaults: YAML only through the safe loader, checkpoints only as weights, nothing listening
beyond this machine unless asked. Behaviour where it can be shown, and a scan of the sources that keeps new
code from slipping an unsafe call in."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from sensorium.config import load_config
from sensorium.errors import ConfigError, UserError
from sensorium.training.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(p for d in ("sensorium", "search", "cluster", "bench", "scripts") for p in (ROOT / d).rglob("*.py"))


class Payload:
    """An object a pickle would rebuild (and so run code for) when loaded without weights_only."""


def test_a_checkpoint_holding_objects_is_refused_not_unpickled(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"format": "sensorium-search/checkpoint/1", "model": Payload()}, path)
    with pytest.raises(UserError, match="not a readable checkpoint"):
        read_checkpoint(path)


def test_a_yaml_config_with_python_tags_is_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_unsafe_loader_and_no_open_listener_in_the_sources(path):
    text = path.read_text()
    assert not re.search(r"yaml\.(load|unsafe_load|full_load)\(|FullLoader|UnsafeLoader", text), "YAML: safe_load only"
    for call in re.findall(r"torch\.load\([^)]*\)", text):
        assert "weights_only=True" in call, f"{call}: checkpoints load as weights only"
    assert "0.0.0.0" not in text and "include_dashboard=True" not in text
