"""One-command experiments: `il experiment <name>` records the data, trains every method under
every condition and seed, evaluates, and writes `results.md`, `results.json` and a bar chart
with error bars into its folder.

An experiment is a module here with a config dataclass (`Config`, every field overridable as
`key=value`) and `run(config, out, on_progress)`. Runs are resumable: every finished (method,
condition, seed) leaves its result in the output folder, and a re-run skips it.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any

from il.config import load_structured

__all__ = ["EXPERIMENTS", "ExperimentError", "claim_folder", "load", "make_config"]

EXPERIMENTS: dict[str, str] = {
    "pc-maze": "il.experiments.pc_maze",
    "id-door": "il.experiments.id_door",
}
"""Name → module. Each module's docstring is its description."""


class ExperimentError(Exception):
    """An experiment that cannot run as asked; the message says what to change."""


def claim_folder(out: Path, config: Any, selecting: Sequence[str]) -> None:
    """Refuse to mix runs of a different protocol into `out`: every field of the config dataclass
    but those in `selecting` (which only choose which runs to do) must match the saved one."""
    from il.experiments.report import write_json

    saved = out / "config.json"
    mine = {k: v for k, v in asdict(config).items() if k not in selecting}
    if saved.exists():
        theirs = {k: v for k, v in json.loads(saved.read_text()).items() if k not in selecting}
        if theirs != mine:
            changed = sorted(k for k in mine if mine[k] != theirs.get(k))
            raise ExperimentError(
                f"{out} holds this experiment with other settings ({', '.join(changed)}); "
                "choose another --out or remove that folder"
            )
    write_json(saved, asdict(config))


def load(name: str) -> ModuleType:
    if name not in EXPERIMENTS:
        raise ExperimentError(
            f"unknown experiment {name!r}; experiments: {', '.join(sorted(EXPERIMENTS))}"
        )
    return importlib.import_module(EXPERIMENTS[name])


def make_config(module: ModuleType, overrides: Sequence[str] = ()) -> Any:
    """The experiment's defaults with `key=value` overrides; an unknown key or a value of the
    wrong type is an `ExperimentError` naming it."""
    return load_structured(module.Config, None, overrides, ExperimentError)
