"""Procedure cloning against BC and aux-BC on Meta-World variations never seen in training.

Does learning the scripted expert's procedure (positions → phase → target → action) carry over
to object and goal positions the demonstrations did not cover, where BC on actions alone has to
interpolate a handful of trajectories? The maze experiment asks this of a search; this one asks
it of a scripted controller.

Protocol, all through il's own commands:

1. Data (`il record`): the scripted expert on each task of `tasks`, one demonstration for each
   of the first `max(train_variations)` variations (seeds 0, 1, ...), with its procedure.
2. Training (`il train`): one multi-task policy (task one-hot) per method, number of training
   variations n and seed, on the demonstrations of the first n variations of every task; the
   same steps, batch, learning rate, trunk and state noise for every method.
   `bc` is plain behaviour cloning (`model.head=mse`, 1 observation) with as many hidden layers
   as the others' trunk and head together.
3. Evaluation (`il eval`): `eval_episodes` episodes per task from seed `eval_seed` on, whose
   variations no training set holds; success within `max_episode_steps`. The expert's rate on
   the same episodes is the reference line.

Everything lands in the output folder: the store, a run folder per (method, n, seed) with its
`result.json`, and `results.md`, `results.json`, `success.png`. A re-run skips finished runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import envs
from envs.metaworld import Suite
from il.experiments import begin, finished, machine, start_over_unless
from il.experiments.report import ResultTable, write_json

__all__ = ["Config", "run"]

METHODS = ("pc-metaworld", "aux-bc-metaworld", "bc")


@dataclass
class Config:
    """Procedure cloning vs. aux-BC and BC on unseen Meta-World variations. Every field can be
    set as `key=value` on the command line."""

    tasks: list[str] = field(default_factory=lambda: ["reach-v3", "push-v3", "pick-place-v3"])
    """Meta-World tasks (of MT50), learnt together by one task-conditioned policy."""
    train_variations: list[int] = field(default_factory=lambda: [5, 10, 20])
    """Numbers of training variations compared: one demonstration each, seeds 0 .. n-1."""
    eval_seed: int = 20
    """First evaluation seed; it must be at least max(train_variations)."""
    eval_episodes: int = 30
    """Evaluation episodes per task (seeds eval_seed, eval_seed + 1, ...; at most 50 -
    eval_seed, so that no variation repeats)."""
    max_episode_steps: int = 200
    """Steps after which an episode counts as failed (the experts need 47-61 on average)."""
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seeds: int = 3
    """Training seeds per (method, number of variations)."""
    steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-3
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    """Trunk of the procedure methods; BC gets these plus `head_hidden` as its hidden layers."""
    head_hidden: list[int] = field(default_factory=lambda: [256])
    obs_noise: float = 0.05
    """State noise of every method (normalized units), as in the BC preset."""
    threads: int = 1
    """torch threads; one is fastest for these small MLPs on a shared 2-core box."""

    def check(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; methods: {', '.join(METHODS)}")
        if not self.tasks:
            raise ValueError("tasks is empty; name Meta-World tasks, e.g. [reach-v3]")
        known = set(envs.suite("metaworld/MT50").task_names)
        bad = [t for t in self.tasks if t not in known]
        if bad:
            raise ValueError(f"unknown task(s) {bad}; tasks are Meta-World's, e.g. push-v3")
        if not self.train_variations or min(self.train_variations) < 1:
            raise ValueError("train_variations needs numbers of at least 1, e.g. [5,10,20]")
        if self.eval_seed < max(self.train_variations):
            raise ValueError(
                f"eval_seed {self.eval_seed} would replay training variations; make it at least "
                f"{max(self.train_variations)}"
            )
        if not 1 <= self.eval_episodes <= 50 - self.eval_seed:
            raise ValueError(
                f"eval_episodes must be between 1 and {50 - self.eval_seed} (50 variations per "
                "task, from eval_seed on)"
            )
        for name in ("seeds", "steps", "batch_size", "max_episode_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")


_SELECTING = ("train_variations", "methods", "seeds")
"""Fields that only choose which runs to do; the others change what a run measures."""


def run(
    config: Config,
    out: str | Path,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> Path:
    """Do every missing run of the experiment in `out`, then write the results; returns the
    path of `results.md`. `on_progress(done, total, label)` follows the runs."""
    out = begin(config, out, _SELECTING)
    start = time.perf_counter()
    n_max = max(config.train_variations)
    store = out / "data" / f"{n_max}-variations.zarr"
    jobs = [
        (m, n, s)
        for n in config.train_variations
        for s in range(config.seeds)
        for m in config.methods
    ]
    total = len(jobs) + 2
    report = on_progress or (lambda done, total, label: None)
    report(0, total, f"recording {n_max} variations per task")
    _record(config, store, n_max)
    results = []
    for i, (method, n, seed) in enumerate(jobs):
        report(i + 1, total, f"{method}, {n} variations, seed {seed}")
        results.append(_train_and_evaluate(config, out, store, method, n, seed))
    report(total - 1, total, "expert on the evaluation episodes")
    expert = _expert_rates(config, out)
    report(total, total, "writing results")
    return _write_results(config, out, results, expert, time.perf_counter() - start)


def _suite(config: Config) -> Suite:
    mt50 = envs.suite("metaworld/MT50")
    tasks = tuple(t for t in mt50.tasks if t.name in config.tasks)
    return type(mt50)(mt50.name, mt50.split, tasks)


def _record(config: Config, store: Path, n: int) -> None:
    from il.data.store import DemoStore
    from il.record import record_expert

    if (store / "zarr.json").exists():
        have = DemoStore.open(str(store)).num_episodes
        if have >= n * len(config.tasks):
            return
    record_expert(
        _suite(config),
        str(store),
        episodes_per_task=n,
        max_episode_steps=config.max_episode_steps,
        only_success=True,
        seed=0,
    )


def _training_episodes(store: Path, n: int) -> list[int]:
    """Episodes of the first n variations (seeds 0 .. n-1) of every task."""
    from il.data.store import DemoStore

    seeds = np.asarray(DemoStore.open(str(store)).episode_meta()["seed"])
    return [int(i) for i in np.flatnonzero(seeds < n)]


def _train_and_evaluate(
    config: Config, out: Path, store: Path, method: str, n: int, seed: int
) -> dict[str, Any]:
    from il.evaluate import evaluate_checkpoint
    from il.train import load_config, train

    folder = out / "runs" / method / f"{n}-variations" / f"seed{seed}"
    if (done := finished(folder)) is not None:
        return done
    t0 = time.perf_counter()
    if not start_over_unless(folder, "checkpoints/last/policy.json"):
        every = max(1, config.steps // 20)
        if method == "bc":
            hidden = [*config.hidden, *config.head_hidden]
            model = [f"model.hidden=[{','.join(map(str, hidden))}]", "model.head=mse"]
        else:
            model = [
                f"model.hidden=[{','.join(map(str, config.hidden))}]",
                f"model.head_hidden=[{','.join(map(str, config.head_hidden))}]",
            ]
        run_config = load_config(
            method,
            None,
            [
                f"data.path={store}",
                f"out={folder}",
                "data.obs=[obs/state]",
                f"train.steps={config.steps}",
                f"train.batch_size={config.batch_size}",
                f"train.lr={config.lr}",
                f"train.warmup_steps={every}",
                "train.val_fraction=0",
                f"train.seed={seed}",
                f"train.threads={config.threads}",
                f"train.log_every={every}",
                f"train.save_every={config.steps}",
                "model.obs_horizon=1",
                f"model.obs_noise={config.obs_noise}",
                *model,
            ],
        )
        run_config.data.episodes = _training_episodes(store, n)
        train(run_config)
    t1 = time.perf_counter()
    report = evaluate_checkpoint(
        folder,
        episodes_per_task=config.eval_episodes,
        seed=config.eval_seed,
        max_episode_steps=config.max_episode_steps,
        workers=1,
    )
    torch.set_num_threads(config.threads)  # evaluation pins one thread per worker
    result = {
        "method": method,
        "train_variations": n,
        "seed": seed,
        "success": report.success_rate,
        "per_task": {t.task: t.success_rate for t in report.tasks},
        "train_seconds": t1 - t0,
        "eval_seconds": time.perf_counter() - t1,
    }
    write_json(folder / "result.json", result)
    return result


def _expert_rates(config: Config, out: Path) -> dict[str, float]:
    from il.evaluate import evaluate
    from il.policies.expert import expert_for_task

    cached = out / "expert.json"
    if cached.exists():
        return json.loads(cached.read_text())
    report = evaluate(
        _suite(config),
        expert_for_task,
        policy_name="expert",
        episodes_per_task=config.eval_episodes,
        seed=config.eval_seed,
        max_episode_steps=config.max_episode_steps,
    )
    rates = {t.task: t.success_rate for t in report.tasks} | {"mean": report.success_rate}
    write_json(cached, rates)
    return rates


def _write_results(
    config: Config,
    out: Path,
    results: list[dict[str, Any]],
    expert: dict[str, float],
    seconds: float,
) -> Path:
    overall = ResultTable(
        f"Success on {config.eval_episodes} unseen variations per task",
        column_name="training variations",
    )
    per_task = ResultTable("Success per task (all training-variation counts)", column_name="task")
    for r in sorted(results, key=lambda r: (r["train_variations"], r["seed"])):
        overall.add(r["method"], f"{r['train_variations']} variations", r["success"])
        for task, rate in r["per_task"].items():
            per_task.add(f"{r['method']}, {r['train_variations']} variations", task, rate)
    chart = overall.bar_chart(
        out / "success.png",
        ylabel="success on unseen variations (%)",
        reference=[(f"scripted expert {100 * expert['mean']:.0f}%", expert["mean"])],
    )
    train_s = sum(r["train_seconds"] for r in results)
    eval_s = sum(r["eval_seconds"] for r in results)
    write_json(
        out / "results.json",
        {
            "config": asdict(config),
            "expert": expert,
            "tables": {"overall": overall.to_json(), "per_task": per_task.to_json()},
            "runs": results,
            "seconds": {
                "total_this_invocation": seconds,
                "training": train_s,
                "evaluation": eval_s,
            },
            "machine": machine(config.threads),
        },
    )
    expert_cells = ", ".join(f"{t} {100 * v:.0f}%" for t, v in expert.items() if t != "mean")
    text = "\n".join(
        [
            "# Procedure cloning on Meta-World",
            "",
            f"Tasks {', '.join(config.tasks)}, one task-conditioned policy per run; one expert "
            f"demonstration per training variation; {config.steps} steps, batch "
            f"{config.batch_size}, lr {config.lr}, trunk {config.hidden}, heads "
            f"{config.head_hidden}, state noise {config.obs_noise}; {config.seeds} seeds; "
            f"evaluation: seeds {config.eval_seed}-{config.eval_seed + config.eval_episodes - 1} "
            f"of every task (variations no training set holds), success within "
            f"{config.max_episode_steps} steps.",
            "",
            overall.markdown(),
            "",
            f"Scripted expert on the same episodes: {100 * expert['mean']:.1f}% ({expert_cells}).",
            "",
            per_task.markdown(),
            "",
            f"![success on unseen variations]({chart.name})",
            "",
            f"Training {train_s / 60:.1f} min and evaluation {eval_s / 60:.1f} min in all "
            f"({len(results)} runs).",
            "",
        ]
    )
    path = out / "results.md"
    path.write_text(text)
    return path
