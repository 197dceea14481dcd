"""The registries: kind -> family module, one plain dict per component kind. Adding a family is its one file
(config and module, see :mod:`sensorium.models.component`) plus one line here; the config's union of a
component's families (``sensorium.config.CoreConfig`` ...) is derived from its registry by :func:`registry_union`.

Example::

    >>> sorted(LINKS)
    ['elu1', 'exp', 'softplus']
    >>> registry_union(LINKS) == (Elu1LinkConfig | SoftplusLinkConfig | ExpLinkConfig)
    True
"""

from __future__ import annotations

from typing import Any, Union

from sensorium import typed
from sensorium.models.component import Component
from sensorium.models.cores.se2d import SECore
from sensorium.models.cores.stacked2d import Core
from sensorium.models.links.elu1 import Elu1Link, Elu1LinkConfig  # noqa: F401 (Elu1LinkConfig: doctest)
from sensorium.models.links.exp import ExpLink, ExpLinkConfig  # noqa: F401
from sensorium.models.links.softplus import SoftplusLink, SoftplusLinkConfig  # noqa: F401
from sensorium.models.modulators.history import HistoryModulator
from sensorium.models.modulators.none import NoModulator
from sensorium.models.readouts.factorized import Factorized2d
from sensorium.models.readouts.gaussian import KSampleGaussian2d
from sensorium.models.shifters.mlp import MLPShifter

CORES: dict[str, type[Component]] = {"stacked2d": Core, "se2d": SECore}
READOUTS: dict[str, type[Component]] = {"gaussian": KSampleGaussian2d, "factorized": Factorized2d}
SHIFTERS: dict[str, type[Component]] = {"mlp": MLPShifter}
MODULATORS: dict[str, type[Component]] = {"none": NoModulator, "history": HistoryModulator}
LINKS: dict[str, type[Component]] = {"elu1": Elu1Link, "softplus": SoftplusLink, "exp": ExpLink}

# the field of ModelConfig -> its registry, in the order the model builds (and so draws initial weights)
REGISTRIES: dict[str, dict[str, type[Component]]] = {
    "core": CORES, "readout": READOUTS, "shifter": SHIFTERS, "modulator": MODULATORS, "link": LINKS,
}


def registry_union(registry: dict[str, type[Component]]) -> Any:
    """The union of the registered families' configs (the config class itself for one family), in registry
    order; a family registered under another name than its config's ``kind`` is an error."""
    for name, family in registry.items():
        if typed.kind_of(family.Config) != name:
            raise TypeError(f"{family.__name__} is registered as {name!r}, but its config's kind is "
                            f"{typed.kind_of(family.Config)!r}")
    return Union[tuple(family.Config for family in registry.values())]  # noqa: UP007 (a union built at run time)
