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
import os
import platform
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any

from il.config import load_structured

__all__ = [
    "EXPERIMENTS",
    "ExperimentError",
    "begin",
    "claim_folder",
    "finished",
    "load",
    "machine",
    "make_config",
    "start_over_unless",
]

EXPERIMENTS: dict[str, str] = {
    "pc-maze": "il.methods.procedure_cloning.pc_maze",
    "pc-metaworld": "il.methods.procedure_cloning.pc_metaworld",
    "id-door": "il.methods.id_pretraining.id_door",
}
"""Name → module. Each module's docstring is its description."""


class ExperimentError(Exception):
    """An experiment that cannot run as asked; the message says what to change."""


PACE = ("threads", "workers")
"""Config fields that set how fast an experiment runs, not what it measures: a resumed run may
change them."""


def claim_folder(out: Path, config: Any, selecting: Sequence[str]) -> None:
    """Refuse to mix runs of a different protocol into `out`: every field of the config dataclass
    but those in `selecting` (which only choose which runs to do) and `PACE` must match the saved
    one."""
    from il.experiments.report import write_json

    saved = out / "config.json"
    free = {*selecting, *PACE}
    mine = {k: v for k, v in asdict(config).items() if k not in free}
    if saved.exists():
        theirs = {k: v for k, v in json.loads(saved.read_text()).items() if k not in free}
        if theirs != mine:
            changed = sorted(k for k in mine if mine[k] != theirs.get(k))
            raise ExperimentError(
                f"{out} holds this experiment with other settings ({', '.join(changed)}); "
                "choose another --out or remove that folder"
            )
    write_json(saved, asdict(config))


def begin(config: Any, out: str | Path, selecting: Sequence[str]) -> Path:
    """What every experiment's `run` does first: check the config, claim the output folder for
    this protocol, and pin torch's threads (`config.threads`)."""
    import torch

    config.check()
    out = Path(out)
    claim_folder(out, config, selecting)
    torch.set_num_threads(config.threads)
    return out


def finished(folder: Path) -> dict[str, Any] | None:
    """The result a run left in `folder/result.json`, or None where it has not finished."""
    result = folder / "result.json"
    return json.loads(result.read_text()) if result.exists() else None


def start_over_unless(folder: Path, marker: str) -> bool:
    """Whether `folder` holds a finished product (`marker`, a path inside it); if not, whatever
    an interrupted run left there is removed, so the run starts over from nothing."""
    if (folder / marker).exists():
        return True
    shutil.rmtree(folder, ignore_errors=True)
    return False


def machine(threads: int) -> dict[str, Any]:
    """Where the figures were measured, for `results.json`."""
    import torch

    return {
        "cpus": len(os.sched_getaffinity(0)),
        "torch_threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


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
