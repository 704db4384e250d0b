"""Procedure cloning against behaviour cloning on mazes never seen in training.

The core result of procedure cloning (Yang et al. 2022): trained on the BFS expert's
demonstrations in a few mazes, BC memorises those mazes and fails in new ones, while procedure
cloning, which learns the expert's search step by step, keeps solving new mazes.

Protocol, all through il's own commands:

1. Data (`il record --env maze/<layout>/<N>`): the BFS expert in each of the first N train
   mazes, `demos_per_maze` episodes each from random starts, with its procedure per step.
2. Training (`il train`): every method on the episodes of the first n mazes, for each n of
   `train_mazes` and each seed; the same steps, batch and learning rate for every method, the
   same `width` for every network.
3. Evaluation (`il eval`): `eval_episodes` episodes (random starts) in each of `test_mazes`
   test mazes — a split whose mazes are generated apart from the train split — and in the n
   training mazes; success = reaching the goal within 100 steps. The BFS expert's rate on the
   same test episodes is the reference line.
4. Where procedure cloning fails: at the first state of every test episode, whether its
   predicted search reaches the same cells as BFS at every layer, and if not, at which layer it
   first departs.

Everything lands in the output folder: the store, a run folder per (method, n, seed) with its
`result.json`, and `results.md`, `results.json`, `success.png`. A re-run skips finished runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import envs
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

METHODS = ("pc-maze", "aux-bc-maze", "aug-bc-maze", "bc-maze")


@dataclass
class Config:
    """Procedure cloning vs. BC, aug-BC and aux-BC on unseen mazes. Every field can be set as
    `key=value` on the command line."""

    layout: str = "tunnel16"
    """Maze generator and size (16×16 tunnel mazes: the paper's)."""
    train_mazes: list[int] = field(default_factory=lambda: [5, 10, 20], metadata=limits(at_least=1))
    """Numbers of training mazes compared (the first n of the train split)."""
    test_mazes: int = field(default=20, metadata=limits(at_least=1))
    """Unseen test mazes every policy is evaluated on."""
    demos_per_maze: int = field(default=4, metadata=limits(at_least=1))
    """Expert episodes per training maze (the paper's 4)."""
    eval_episodes: int = field(default=5, metadata=limits(at_least=1))
    """Evaluation episodes per maze (random starts)."""
    eval_seed: int = field(default=1000, metadata=limits(at_least=0))
    """Seed of the first evaluation episode (clear of the demonstrations' seeds 0, 1, ...)."""
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seeds: int = field(default=3, metadata=limits(at_least=1))
    """Training seeds per (method, number of mazes)."""
    steps: int = field(default=2000, metadata=limits(at_least=1))
    """Optimizer steps of every run (the paper trains 100k-500k on accelerators)."""
    batch_size: int = field(default=32, metadata=limits(at_least=1))
    """The paper's batch size (for procedure cloning: map pairs per step)."""
    lr: float = field(default=1e-3, metadata=limits(above=0))
    """Adam learning rate (the paper's model default), no weight decay, no EMA."""
    width: int = field(default=32, metadata=limits(at_least=2))
    """Network width of every method: filters width/2, width/2, width, width (+5 or +width);
    the paper's is 256."""
    threads: int = field(default=1, metadata=limits(at_least=0))
    """torch threads; one is fastest for these small convolutions on a shared 2-core box."""

    def check(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; methods: {', '.join(METHODS)}")
        if not self.train_mazes:
            raise ValueError("train_mazes is empty; give numbers of mazes, e.g. [5,10,20]")
        envs.suite(f"maze/{self.layout}/1")  # a bad layout fails here, in one line


class MazeExperiment(Experiment):
    Config = Config
    selecting = ("train_mazes", "methods", "seeds")
    condition = "train_mazes"

    @property
    def store(self) -> Path:
        return self.out / "data" / f"{self.config.layout}-{max(self.config.train_mazes)}mazes.zarr"

    def preparation(self) -> list[tuple[str, Callable[[], None]]]:
        n_max = max(self.config.train_mazes)
        return [(f"recording {n_max} mazes", lambda: self._record(n_max))]

    def _record(self, n_mazes: int) -> None:
        from il.record import record_expert

        suite = envs.suite(f"maze/{self.config.layout}/{n_mazes}")
        record_expert(
            suite,
            str(self.store),
            episodes_per_task=self.config.demos_per_maze,
            max_episode_steps=envs.maze.MAX_EPISODE_STEPS,
        )

    def runs(self) -> list[Run]:
        c = self.config
        return [
            Run(
                m,
                n,
                s,
                self.out / "runs" / m / f"{n}-mazes" / f"seed{s}",
                f"{m}, {n} mazes, seed {s}",
            )
            for m in c.methods
            for n in c.train_mazes
            for s in range(c.seeds)
        ]

    def train(self, run: Run) -> None:
        c = self.config
        train_policy(
            run.method,
            self.store,
            run.folder,
            steps=c.steps,
            seed=run.seed,
            threads=c.threads,
            overrides=[
                "data.obs=[obs/grid]",
                "data.normalize={action: identity}",
                f"train.batch_size={c.batch_size}",
                f"train.lr={c.lr}",
                "train.weight_decay=0",
                "train.ema_decay=0",
                f"model.width={c.width}",
            ],
            tasks=[t.name for t in envs.suite(f"maze/{c.layout}/{run.condition}").tasks],
        )

    def evaluate(self, run: Run) -> dict[str, Any]:
        from il.evaluate import evaluate_checkpoint

        c = self.config
        common = {"episodes_per_task": c.eval_episodes, "seed": c.eval_seed, "workers": 1}
        test = evaluate_checkpoint(
            run.folder, suite=f"maze/{c.layout}/{c.test_mazes}", split="test", **common
        )
        seen = evaluate_checkpoint(run.folder, **common)  # the mazes it was trained on
        return {
            "test_success": test.success_rate,
            "train_success": seen.success_rate,
            "test_episodes": sum(len(t.episodes) for t in test.tasks),
        }

    def write_results(self, results: list[dict[str, Any]], seconds: float) -> Path:
        for r in results:
            if r["method"] == "pc-maze":
                folder = self.out / "runs" / "pc-maze" / f"{r['train_mazes']}-mazes"
                r["search"] = _search_fidelity(self.config, folder / f"seed{r['seed']}")
        return _write_results(self.config, self.out, results, _expert_rate(self.config), seconds)


def run(config: Config, out: str | Path, on_progress: Progress | None = None) -> Path:
    """Do every missing run of the experiment in `out`, then write the results; returns the
    path of `results.md`. `on_progress(done, total, label)` follows the runs."""
    return run_experiment(MazeExperiment(config, out), on_progress)


def _expert_rate(config: Config) -> float:
    from il.evaluate import evaluate
    from il.policies.expert import expert_for_task

    report = evaluate(
        envs.suite(f"maze/{config.layout}/{config.test_mazes}", split="test"),
        expert_for_task,
        policy_name="expert",
        episodes_per_task=config.eval_episodes,
        seed=config.eval_seed,
        obs=envs.maze.OBS_KEYS,
        max_episode_steps=envs.maze.MAX_EPISODE_STEPS,
    )
    return report.success_rate


def _search_fidelity(config: Config, folder: Path) -> dict[str, float]:
    """At the first state of each test episode: the share of predicted searches that reach
    exactly BFS's cells at every layer up to the agent, and the share that first depart at
    layer 1 (the goal's neighbours). Cached in the run folder."""
    from envs.maze import NOT_REACHED, bfs_procedure
    from il.policies.registry import load_policy

    cached = folder / "search.json"
    if cached.exists():
        return json.loads(cached.read_text())
    policy = load_policy(folder)
    suite = envs.suite(f"maze/{config.layout}/{config.test_mazes}", split="test")
    exact = at_first = total = 0
    for task in suite.tasks:
        env = suite.make(task.name)
        for k in range(config.eval_episodes):
            obs, _ = env.reset(seed=config.eval_seed + k)
            expected = bfs_procedure(env.maze.walls, env.maze.goal, env.agent)[0] != NOT_REACHED
            predicted = policy.procedures(obs["grid"][None])[0] != NOT_REACHED
            wrong = [
                layer
                for layer in range(len(expected))
                if layer >= len(predicted) or (predicted[layer] != expected[layer]).any()
            ]
            total += 1
            exact += not wrong
            at_first += bool(wrong) and wrong[0] == 0
    result = {"episodes": total, "exact": exact / total, "first_error_at_layer_1": at_first / total}
    write_json(cached, result)
    return result


def _tables(config: Config, results: list[dict[str, Any]]) -> tuple[ResultTable, ResultTable]:
    test = ResultTable(
        f"Success in {config.test_mazes} unseen test mazes", column_name="training mazes"
    )
    seen = ResultTable("Success in the training mazes", column_name="training mazes")
    for r in sorted(results, key=lambda r: (r["train_mazes"], r["seed"])):
        column = f"{r['train_mazes']} mazes"
        test.add(r["method"], column, r["test_success"])
        seen.add(r["method"], column, r["train_success"])
    return test, seen


def _write_results(
    config: Config, out: Path, results: list[dict[str, Any]], expert: float, seconds: float
) -> Path:
    test, seen = _tables(config, results)
    search = ResultTable(
        "Procedure cloning's search at the start of the test episodes",
        row_name="predicted BFS layers",
        column_name="training mazes",
    )
    for r in sorted(results, key=lambda r: (r["train_mazes"], r["seed"])):
        if "search" in r:
            column = f"{r['train_mazes']} mazes"
            search.add("all exact", column, r["search"]["exact"])
            search.add("first wrong at layer 1", column, r["search"]["first_error_at_layer_1"])
    chart = test.bar_chart(
        out / "success.png",
        ylabel="success on unseen mazes (%)",
        reference=[(f"BFS expert {100 * expert:.0f}%", expert)],
    )
    tables = {"test": test.to_json(), "train": seen.to_json(), "search": search.to_json()}
    summary = results_summary(
        config, results, seconds, {"expert_test_success": expert, "tables": tables}
    )
    write_json(out / "results.json", summary)
    train_s, eval_s = summary["seconds"]["training"], summary["seconds"]["evaluation"]
    episodes = config.test_mazes * config.eval_episodes
    text = "\n".join(
        [
            "# Procedure cloning on mazes",
            "",
            f"`{config.layout}` mazes; {config.demos_per_maze} expert demonstrations per "
            f"training maze; {config.steps} steps, batch {config.batch_size}, lr {config.lr}, "
            f"width {config.width}; {config.seeds} seeds; evaluation: {config.eval_episodes} "
            f"episodes in each of {config.test_mazes} unseen test mazes ({episodes} episodes) "
            "and in each training maze, success = the goal within 100 steps.",
            "",
            test.markdown(),
            "",
            f"BFS expert on the same test episodes: {100 * expert:.1f}%.",
            "",
            seen.markdown(),
            "",
            *([search.markdown(), ""] if search.rows else []),
            f"![success on unseen mazes]({chart.name})",
            "",
            f"Training {train_s / 60:.1f} min and evaluation {eval_s / 60:.1f} min in all "
            f"({len(results)} runs).",
            "",
        ]
    )
    path = out / "results.md"
    path.write_text(text)
    return path
