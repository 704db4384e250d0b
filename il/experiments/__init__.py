"""One-command experiments: `il experiment <name>` records the data, trains every method under
every condition and seed, evaluates, and writes `results.md`, `results.json` and a bar chart
with error bars into its folder.

An experiment is a module here with a config dataclass (`Config`, every field overridable as
`key=value`) and `run(config, out, on_progress)`. Runs are resumable: every finished (method,
condition, seed) leaves its result in the output folder, and a re-run skips it.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

__all__ = ["EXPERIMENTS", "ExperimentError", "load", "make_config"]

EXPERIMENTS: dict[str, str] = {
    "pc-maze": "il.experiments.pc_maze",
    "id-door": "il.experiments.id_door",
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
    for item in overrides:
        if "=" not in item:
            raise ExperimentError(f"override {item!r} is not key=value (e.g. steps=1000)")
    schema = OmegaConf.structured(module.Config)
    try:
        merged = OmegaConf.merge(schema, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        first = str(e).splitlines()[0]
        if "not in" in first or "Could not override" in first:
            valid = ", ".join(str(k) for k in schema)
            raise ExperimentError(f"unknown key {key!r}; keys: {valid}") from None
        raise ExperimentError(f"bad value for {key!r}: {first}") from None
    config = OmegaConf.to_object(merged)
    check = getattr(config, "check", None)
    if check is not None:
        try:
            check()
        except ValueError as e:
            raise ExperimentError(str(e)) from None
    return config
