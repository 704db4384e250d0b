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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import envs
from envs.metaworld import Suite
from il.config import limits
from il.experiments.report import ResultTable, write_json
from il.experiments.runner import (
    Experiment,
    Progress,
    Run,
    results_summary,
    run_experiment,
    train_policy,
)

__all__ = ["Config", "run"]

METHODS = ("pc-metaworld", "aux-bc-metaworld", "bc")


@dataclass
class Config:
    """Procedure cloning vs. aux-BC and BC on unseen Meta-World variations. Every field can be
    set as `key=value` on the command line."""

    tasks: list[str] = field(default_factory=lambda: ["reach-v3", "push-v3", "pick-place-v3"])
    """Meta-World tasks (of MT50), learnt together by one task-conditioned policy."""
    train_variations: list[int] = field(
        default_factory=lambda: [5, 10, 20], metadata=limits(at_least=1)
    )
    """Numbers of training variations compared: one demonstration each, seeds 0 .. n-1."""
    eval_seed: int = field(default=20, metadata=limits(at_least=0))
    """First evaluation seed; it must be at least max(train_variations)."""
    eval_episodes: int = field(default=30, metadata=limits(at_least=1))
    """Evaluation episodes per task (seeds eval_seed, eval_seed + 1, ...; at most 50 -
    eval_seed, so that no variation repeats)."""
    max_episode_steps: int = field(default=200, metadata=limits(at_least=1))
    """Steps after which an episode counts as failed (the experts need 47-61 on average)."""
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seeds: int = field(default=3, metadata=limits(at_least=1))
    """Training seeds per (method, number of variations)."""
    steps: int = field(default=3000, metadata=limits(at_least=1))
    batch_size: int = field(default=256, metadata=limits(at_least=1))
    lr: float = field(default=1e-3, metadata=limits(above=0))
    hidden: list[int] = field(default_factory=lambda: [256, 256], metadata=limits(at_least=1))
    """Trunk of the procedure methods; BC gets these plus `head_hidden` as its hidden layers."""
    head_hidden: list[int] = field(default_factory=lambda: [256], metadata=limits(at_least=1))
    obs_noise: float = field(default=0.05, metadata=limits(at_least=0))
    """State noise of every method (normalized units), as in the BC preset."""
    threads: int = field(default=1, metadata=limits(at_least=0))
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
        if not self.train_variations:
            raise ValueError("train_variations is empty; give numbers of variations, e.g. [5,10]")
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


class MetaWorldExperiment(Experiment):
    Config = Config
    selecting = ("train_variations", "methods", "seeds")
    condition = "train_variations"

    @property
    def store(self) -> Path:
        return self.out / "data" / f"{max(self.config.train_variations)}-variations.zarr"

    def preparation(self) -> list[tuple[str, Callable[[], None]]]:
        n_max = max(self.config.train_variations)
        return [(f"recording {n_max} variations per task", lambda: self._record(n_max))]

    def _record(self, n: int) -> None:
        from il.data.store import DemoStore
        from il.record import record_expert

        if (self.store / "zarr.json").exists():
            have = DemoStore.open(str(self.store)).num_episodes
            if have >= n * len(self.config.tasks):
                return
        record_expert(
            _suite(self.config),
            str(self.store),
            episodes_per_task=n,
            max_episode_steps=self.config.max_episode_steps,
            only_success=True,
            seed=0,
        )

    def runs(self) -> list[Run]:
        c = self.config
        return [
            Run(
                m,
                n,
                s,
                self.out / "runs" / m / f"{n}-variations" / f"seed{s}",
                f"{m}, {n} variations, seed {s}",
            )
            for n in c.train_variations
            for s in range(c.seeds)
            for m in c.methods
        ]

    def train(self, run: Run) -> None:
        c = self.config
        if run.method == "bc":
            hidden = [*c.hidden, *c.head_hidden]
            model = [f"model.hidden=[{','.join(map(str, hidden))}]", "model.head=mse"]
        else:
            model = [
                f"model.hidden=[{','.join(map(str, c.hidden))}]",
                f"model.head_hidden=[{','.join(map(str, c.head_hidden))}]",
            ]
        train_policy(
            run.method,
            self.store,
            run.folder,
            steps=c.steps,
            seed=run.seed,
            threads=c.threads,
            overrides=[
                "data.obs=[obs/state]",
                f"train.batch_size={c.batch_size}",
                f"train.lr={c.lr}",
                "model.obs_horizon=1",
                f"model.obs_noise={c.obs_noise}",
                *model,
            ],
            episodes=_training_episodes(self.store, run.condition),
        )

    def evaluate(self, run: Run) -> dict[str, Any]:
        from il.evaluate import evaluate_checkpoint

        c = self.config
        report = evaluate_checkpoint(
            run.folder,
            episodes_per_task=c.eval_episodes,
            seed=c.eval_seed,
            max_episode_steps=c.max_episode_steps,
            workers=1,
        )
        return {
            "success": report.success_rate,
            "per_task": {t.task: t.success_rate for t in report.tasks},
        }

    def references(self) -> list[tuple[str, Callable[[], None]]]:
        return [("expert on the evaluation episodes", lambda: _expert_rates(self.config, self.out))]

    def write_results(self, results: list[dict[str, Any]], seconds: float) -> Path:
        expert = _expert_rates(self.config, self.out)  # measured by the reference step
        return _write_results(self.config, self.out, results, expert, seconds)


def run(config: Config, out: str | Path, on_progress: Progress | None = None) -> Path:
    """Do every missing run of the experiment in `out`, then write the results; returns the
    path of `results.md`. `on_progress(done, total, label)` follows the runs."""
    return run_experiment(MetaWorldExperiment(config, out), on_progress)


def _suite(config: Config) -> Suite:
    mt50 = envs.suite("metaworld/MT50")
    tasks = tuple(t for t in mt50.tasks if t.name in config.tasks)
    return type(mt50)(mt50.name, mt50.split, tasks)


def _training_episodes(store: Path, n: int) -> list[int]:
    """Episodes of the first n variations (seeds 0 .. n-1) of every task."""
    from il.data.store import DemoStore

    seeds = np.asarray(DemoStore.open(str(store)).episode_meta()["seed"])
    return [int(i) for i in np.flatnonzero(seeds < n)]


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
    tables = {"overall": overall.to_json(), "per_task": per_task.to_json()}
    summary = results_summary(config, results, seconds, {"expert": expert, "tables": tables})
    write_json(out / "results.json", summary)
    train_s, eval_s = summary["seconds"]["training"], summary["seconds"]["evaluation"]
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
