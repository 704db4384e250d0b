"""One-command experiments: `il experiment <name>` records the data, trains every method under
every condition and seed, evaluates, and writes `results.md`, `results.json` and a bar chart
with error bars into its folder.

An experiment lives in its method's package (`il/methods/<method>/<name>.py`) as a config
dataclass (`Config`, every field overridable as `key=value`), an `Experiment` of the shared
runner (`il.experiments.runner`: record → method × condition × seed → train → evaluate →
results, resumable) and `run(config, out, on_progress)`. It is reachable by name through one
row of `EXPERIMENTS`, imported on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any

__all__ = ["EXPERIMENTS", "ExperimentError", "load", "make_config"]

EXPERIMENTS: dict[str, str] = {
    "pc-maze": "il.methods.procedure_cloning.pc_maze",
    "pc-metaworld": "il.methods.procedure_cloning.pc_metaworld",
    "id-door": "il.methods.id_pretraining.id_door",
    "rth": "il.methods.rth.rth_experiment",
}
"""Name → module. Each module's docstring is its description."""


class ExperimentError(Exception):
    """An experiment that cannot run as asked; the message says what to change."""


def load(name: str) -> ModuleType:
    if name not in EXPERIMENTS:
        raise ExperimentError(
            f"unknown experiment {name!r}; experiments: {', '.join(sorted(EXPERIMENTS))}"
        )
    return importlib.import_module(EXPERIMENTS[name])


def make_config(module: ModuleType, overrides: Sequence[str] = ()) -> Any:
    """The experiment's defaults with `key=value` overrides; an unknown key or a value of the
    wrong type is an `ExperimentError` naming it."""
    from il.config import load_structured

    return load_structured(module.Config, None, overrides, ExperimentError)
