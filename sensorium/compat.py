"""Compatibility shims that let neuralpredictors 0.3.0 import on Python >= 3.10.

Why: the PyPI release (SENSORIUM.md §7)
  * imports ``Iterable`` / ``Mapping`` from ``collections`` (moved to ``collections.abc``, removed from
    ``collections`` in Python 3.10);
  * imports ``torchvision`` at module level, although only ``TransferLearningCore`` uses it. The PyPI
    torchvision wheel does not import beside a CPU torch, so we never install it;
  * uses scikit-image without declaring it (we declare it ourselves in pyproject.toml).

When it can go: once a neuralpredictors release imports cleanly on Python 3.11 without torchvision.
Import this module (``import sensorium.compat``) before any ``neuralpredictors`` import; every module of
this project that uses neuralpredictors does so through :func:`neuralpredictors_ready`.
Site-packages is never edited.
"""

from __future__ import annotations

import collections
import collections.abc
import importlib.util
import sys
import types


def _alias_collections_abc() -> None:
    """Expose ``collections.Iterable`` etc. again, as the old imports expect."""
    for name in ("Iterable", "Mapping", "MutableMapping", "Sequence", "Callable"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))


def _stub_torchvision_if_missing() -> None:
    """Register an empty ``torchvision`` module when the real one cannot be imported.

    Only ``TransferLearningCore`` touches ``torchvision`` attributes; using it with the stub raises an
    ``AttributeError`` naming torchvision, which is the honest outcome on a machine without it.
    """
    if "torchvision" in sys.modules:
        return
    if importlib.util.find_spec("torchvision") is not None:
        try:
            import torchvision  # noqa: F401

            return
        except Exception:  # a CUDA torchvision beside a CPU torch fails with a RuntimeError
            pass
    stub = types.ModuleType("torchvision")
    stub.__doc__ = "stand-in registered by sensorium.compat: torchvision is not usable here"
    sys.modules["torchvision"] = stub


def neuralpredictors_ready() -> None:
    """Apply the shims (idempotent). Call before importing anything from neuralpredictors."""
    _alias_collections_abc()
    _stub_torchvision_if_missing()


neuralpredictors_ready()
