"""The one loop every experiment runs: record → method × condition × seed → train → evaluate →
tables, chart and text, resumable at every step.

An experiment says only what differs: how it records its data (`preparation`), which runs it
compares (`runs`), how one run trains (`train`, usually `il train` through `train_policy`) and
is measured (`evaluate`), any reference measured after the runs (`references`, e.g. the expert
on the same episodes), and how the results read (`write_results`). The runner owns the rest:
claiming the output folder for one protocol, progress, skipping finished runs, starting an
interrupted run over, timing, and each run's `result.json`.

A run's folder holds its checkpoint and `result.json`; a re-run of the experiment returns that
JSON without training or evaluating again, so an interrupted experiment resumes where it
stopped and an experiment asked for more seeds or conditions does only the new runs.
"""

from __future__ import annotations

import abc
import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from il.config import check_config
from il.experiments.report import write_json

__all__ = [
    "PACE",
    "Experiment",
    "Run",
    "claim_folder",
    "finished",
    "machine",
    "results_summary",
    "run_experiment",
    "start_over_unless",
    "train_policy",
]

PACE = ("threads", "workers")
"""Config fields that set how fast an experiment runs, not what it measures: a resumed run may
change them."""

Progress = Callable[[int, int, str], None]
"""`(done, total, label)`: what the experiment is doing now."""


@dataclass(frozen=True)
class Run:
    """One trained and evaluated policy: a method under one condition with one seed."""

    method: str
    condition: Any
    """The value compared across columns (a number of mazes, of variations, of demos)."""
    seed: int
    folder: Path
    label: str
    """What the progress bar says while it runs."""


class Experiment(abc.ABC):
    """One experiment: its config, its output folder, and the steps the runner calls."""

    Config: ClassVar[type]
    """The config dataclass: every field can be set as `key=value`; `check()` validates it."""
    selecting: ClassVar[tuple[str, ...]] = ()
    """Config fields that only choose which runs to do; the others change what a run measures,
    so a folder holding runs made with other values of them is refused."""
    condition: ClassVar[str]
    """The name `result.json` gives a run's condition (e.g. `train_mazes`)."""
    trained: ClassVar[str] = "checkpoints/last/policy.json"
    """A path inside a run's folder that exists once its training finished."""

    def __init__(self, config: Any, out: str | Path) -> None:
        self.config = config
        self.out = Path(out)

    def preparation(self) -> Sequence[tuple[str, Callable[[], None]]]:
        """Steps before the runs, with their progress labels (recording the data); each must
        skip what an earlier invocation finished."""
        return ()

    @abc.abstractmethod
    def runs(self) -> Sequence[Run]:
        """Every run of the experiment, in the order they are done."""

    @abc.abstractmethod
    def train(self, run: Run) -> None:
        """Train `run` into its (empty) folder."""

    @abc.abstractmethod
    def evaluate(self, run: Run) -> dict[str, Any]:
        """Measure the trained run: the figures `result.json` keeps beside method, condition,
        seed and the seconds spent."""

    def references(self) -> Sequence[tuple[str, Callable[[], None]]]:
        """Steps after the runs, with their progress labels (e.g. the expert's rate)."""
        return ()

    @abc.abstractmethod
    def write_results(self, results: list[dict[str, Any]], seconds: float) -> Path:
        """Write `results.md`, `results.json` and the chart from every run's result; returns
        the path of `results.md`. `seconds`: the time this invocation took."""


def run_experiment(experiment: Experiment, on_progress: Progress | None = None) -> Path:
    """Do every missing step of `experiment`, then write its results; returns `results.md`."""
    import torch

    config = experiment.config
    check_config(config)
    claim_folder(experiment.out, config, experiment.selecting)
    torch.set_num_threads(config.threads)
    report = on_progress or (lambda done, total, label: None)
    start = time.perf_counter()
    before, runs, after = experiment.preparation(), experiment.runs(), experiment.references()
    total = len(before) + len(runs) + len(after)
    done = 0
    for label, step in before:
        report(done, total, label)
        step()
        done += 1
    results = []
    for run in runs:
        report(done, total, run.label)
        results.append(_train_and_evaluate(experiment, run))
        done += 1
    for label, step in after:
        report(done, total, label)
        step()
        done += 1
    report(total, total, "writing results")
    return experiment.write_results(results, time.perf_counter() - start)


def _train_and_evaluate(experiment: Experiment, run: Run) -> dict[str, Any]:
    import torch

    if (done := finished(run.folder)) is not None:
        return done
    t0 = time.perf_counter()
    if not start_over_unless(run.folder, experiment.trained):
        experiment.train(run)
    t1 = time.perf_counter()
    figures = experiment.evaluate(run)
    torch.set_num_threads(experiment.config.threads)  # evaluation pins one thread per worker
    result = {
        "method": run.method,
        experiment.condition: run.condition,
        "seed": run.seed,
        **figures,
        "train_seconds": t1 - t0,
        "eval_seconds": time.perf_counter() - t1,
    }
    write_json(run.folder / "result.json", result)
    return result


def train_policy(
    method: str,
    store: str | Path,
    folder: str | Path,
    *,
    steps: int,
    seed: int,
    threads: int,
    overrides: Sequence[str] = (),
    episodes: Sequence[int] | None = None,
    tasks: Sequence[str] | None = None,
) -> Path:
    """`il train` of one run, as experiments use it: `steps` steps with 20 log points, one
    checkpoint at the end, no validation split (the experiment measures in the env), no config
    file (every setting the experiment fixes is in `overrides`, so a preset edited later cannot
    change a result). `episodes`/`tasks` narrow the store. Returns the checkpoint folder."""
    from il.train import load_config, train

    every = max(1, steps // 20)
    config = load_config(
        method,
        None,
        [
            f"data.path={store}",
            f"out={folder}",
            f"train.steps={steps}",
            f"train.warmup_steps={every}",
            "train.val_fraction=0",
            f"train.seed={seed}",
            f"train.threads={threads}",
            f"train.log_every={every}",
            f"train.save_every={steps}",
            *overrides,
        ],
    )
    if episodes is not None:
        config.data.episodes = [int(e) for e in episodes]
    if tasks is not None:
        config.data.tasks = list(tasks)
    return train(config)


def claim_folder(out: Path, config: Any, selecting: Sequence[str]) -> None:
    """Refuse to mix runs of a different protocol into `out`: every field of the config dataclass
    but those in `selecting` (which only choose which runs to do) and `PACE` must match the saved
    one."""
    from il.experiments import ExperimentError

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


def results_summary(
    config: Any,
    results: list[dict[str, Any]],
    seconds: float,
    figures: dict[str, Any],
    *,
    training: str = "training",
    spent: dict[str, float] | None = None,
) -> dict[str, Any]:
    """What every `results.json` holds: the config, the experiment's own `figures` (tables,
    reference rates), every run's result, the minutes spent and the machine. `training` names
    the runs' training time; `spent` adds time spent before the runs (e.g. pretraining)."""
    return {
        "config": asdict(config),
        **figures,
        "runs": results,
        "seconds": {
            "total_this_invocation": seconds,
            **(spent or {}),
            training: sum(r["train_seconds"] for r in results),
            "evaluation": sum(r["eval_seconds"] for r in results),
        },
        "machine": machine(config.threads),
    }


def machine(threads: int) -> dict[str, Any]:
    """Where the figures were measured, for `results.json`."""
    import torch

    return {
        "cpus": len(os.sched_getaffinity(0)),
        "torch_threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
