"""RT-H against flat BC with the same backbone: sharing across tasks, online correction in words,
and learning from corrections (Belkhale et al. 2024; METHODS §2b).

Protocol, all through il's own commands:

1. Data (`il record`): `demos_per_task` scripted-expert demonstrations of every task of `suite`
   on its training variations (benchmark seed 0, episode seeds 0, 1, ...), with their
   language-motion labels; and `heldout_demos` per task on the variations of benchmark seed 1,
   which no training run sees, for the held-out action error.
2. Training (`il train`): `rth` and `bc` per seed, the same observation encoder (state, 2 steps,
   task as a sentence embedding), MLP, steps, batch, learning rate and state noise; `rth` adds
   its motion head, and its action head reads the phrase.
3. Measures of each run: success on `eval_episodes` per task of the training variations
   (`il eval`) and of the held-out ones (`il eval --task-seed 1`); the held-out action error
   (mean squared error of the action the policy takes in each recorded held-out state against
   the expert's, in the env's action units); for `rth`, success on the held-out variations with
   the simulated corrector (`il eval --intervene expert-motion`) and the steps it corrected.
4. Learning from corrections: each run collects `correction_episodes` per task on the training
   variations with its own kind of correction (`il eval --record`): `rth` in words
   (`expert-motion`), `bc` by the expert taking over (`expert-takeover`), both stepping in
   after `patience` disagreeing steps for `hold` steps; then `il finetune` (`rth-intervene`:
   the motion head only; `flat-iwr`: intervention-weighted regression) and both evaluations
   again.

Everything lands in the output folder: the stores, a run folder per (method, seed) with its
corrections, its fine-tuned policy and `result.json`, and `results.md`, `results.json` and
`success.png`. A re-run skips finished work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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

METHODS = ("rth", "bc")
FINETUNE = {"rth": ("rth-intervene", "expert-motion"), "bc": ("flat-iwr", "expert-takeover")}
"""Each method's fine-tune and the correction it learns from."""
HELD_OUT_SEED = 1


@dataclass
class Config:
    """RT-H vs flat BC on a Meta-World suite from state. Every field can be set as `key=value`."""

    suite: str = "metaworld/MT10"
    tasks: list[str] = field(default_factory=list)
    """Only these tasks of the suite (default: all)."""
    demos_per_task: int = field(default=20, metadata=limits(at_least=1))
    heldout_demos: int = field(default=5, metadata=limits(at_least=1))
    """Expert episodes per task on the held-out variations, for the action error."""
    eval_episodes: int = field(default=20, metadata=limits(at_least=1, at_most=50))
    """Evaluation episodes per task, on each set of variations."""
    correction_episodes: int = field(default=30, metadata=limits(at_least=0, at_most=50))
    """Correction episodes per task (0: no learning from corrections)."""
    patience: int = field(default=3, metadata=limits(at_least=1))
    hold: int = field(default=10, metadata=limits(at_least=1))
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seeds: int = field(default=3, metadata=limits(at_least=1))
    steps: int = field(default=20000, metadata=limits(at_least=1))
    finetune_steps: int = field(default=3000, metadata=limits(at_least=1))
    batch_size: int = field(default=256, metadata=limits(at_least=1))
    lr: float = field(default=1e-3, metadata=limits(above=0))
    finetune_lr: float = field(default=3e-4, metadata=limits(above=0))
    hidden: list[int] = field(default_factory=lambda: [512, 512, 512])
    motion_hidden: list[int] = field(default_factory=lambda: [256, 256])
    obs_noise: float = field(default=0.05, metadata=limits(at_least=0))
    workers: int = field(default=2, metadata=limits(at_least=1))
    threads: int = field(default=2, metadata=limits(at_least=0))

    def check(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; methods: {', '.join(METHODS)}")
        if not self.suite.startswith("metaworld/"):
            raise ValueError(f"suite {self.suite!r}: the corrector needs a Meta-World suite")
        _suite(self)  # an unknown suite or task says so here


class RTHExperiment(Experiment):
    Config = Config
    selecting = ("methods", "seeds")
    condition = "suite"

    @property
    def store(self) -> Path:
        return self.out / "data" / f"demos-{self.config.demos_per_task}.zarr"

    @property
    def heldout_store(self) -> Path:
        return self.out / "data" / f"heldout-{self.config.heldout_demos}.zarr"

    def preparation(self) -> list[tuple[str, Callable[[], None]]]:
        c = self.config
        return [
            (f"recording {c.demos_per_task} demos per task", self._record_training),
            (f"recording {c.heldout_demos} held-out demos per task", self._record_heldout),
        ]

    def _record_training(self) -> None:
        from il.record import record_expert

        suite = _suite(self.config)
        record_expert(
            suite,
            str(self.store),
            episodes_per_task=self.config.demos_per_task,
            only_success=True,
            workers=self.config.workers,
        )

    def _record_heldout(self) -> None:
        from il.record import record_expert

        suite = _suite(self.config, HELD_OUT_SEED)
        record_expert(
            suite,
            str(self.heldout_store),
            episodes_per_task=self.config.heldout_demos,
            only_success=True,
            workers=self.config.workers,
        )

    def runs(self) -> list[Run]:
        c = self.config
        name = c.suite.split("/", 1)[1]
        return [
            Run(m, name, s, self.out / "runs" / m / f"seed{s}", f"{m}, seed {s}")
            for s in range(c.seeds)
            for m in c.methods
        ]

    def train(self, run: Run) -> None:
        c = self.config
        model = [
            f"model.hidden=[{','.join(map(str, c.hidden))}]",
            "model.obs_horizon=2",
            "model.task_encoding=text",
            f"model.obs_noise={c.obs_noise}",
        ]
        if run.method == "rth":
            model.append(f"model.motion_hidden=[{','.join(map(str, c.motion_hidden))}]")
        else:
            model.append("model.head=mse")
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
                "train.ema_decay=0.999",
                "train.grad_clip=1.0",
                *model,
            ],
        )

    def _success(self, folder: Path, task_seed: int, **kwargs: Any) -> Any:
        """`evaluate_checkpoint` on the variations of `task_seed`, by the experiment's
        workers and (unless `kwargs` say otherwise) its number of episodes."""
        from il.evaluate import evaluate_checkpoint

        kwargs.setdefault("episodes_per_task", self.config.eval_episodes)
        return evaluate_checkpoint(
            folder, task_seed=task_seed, workers=self.config.workers, **kwargs
        )

    def evaluate(self, run: Run) -> dict[str, Any]:
        from il.interventions import InterveneSpec
        from il.train import finetune_config, train

        c = self.config
        spec = InterveneSpec(c.patience, c.hold)
        figures: dict[str, Any] = {
            "success_training": self._success(run.folder, 0).success_rate,
            "success_heldout": self._success(run.folder, HELD_OUT_SEED).success_rate,
            "heldout_action_mse": heldout_action_mse(run.folder, self.heldout_store),
        }
        if run.method == "rth":
            for variations, task_seed in (("training", 0), ("heldout", HELD_OUT_SEED)):
                corrected = self._success(run.folder, task_seed, intervene=("expert-motion", spec))
                figures[f"success_{variations}_corrected"] = corrected.success_rate
                figures[f"corrected_steps_per_episode_{variations}"] = (
                    corrected.interventions / sum(len(t.episodes) for t in corrected.tasks)
                )
                figures[f"tasks_{variations}_corrected"] = {
                    t.task: t.success_rate for t in corrected.tasks
                }
        if c.correction_episodes:
            method, intervener = FINETUNE[run.method]
            store = run.folder / "corrections.zarr"
            collected = self._success(
                run.folder,
                0,
                episodes_per_task=c.correction_episodes,
                intervene=(intervener, spec),
                record=store,
            )
            tuned = run.folder / "finetuned"
            if not (tuned / "checkpoints" / "last" / "policy.json").exists():
                every = max(1, c.finetune_steps // 20)
                train(
                    finetune_config(
                        method,
                        run.folder,
                        None,
                        [
                            f"data.path={store}",
                            f"out={tuned}",
                            f"train.steps={c.finetune_steps}",
                            f"train.batch_size={c.batch_size}",
                            f"train.lr={c.finetune_lr}",
                            f"train.warmup_steps={every}",
                            f"train.log_every={every}",
                            f"train.save_every={c.finetune_steps}",
                            "train.val_fraction=0",
                            "train.ema_decay=0",
                            f"train.seed={run.seed}",
                            f"train.threads={c.threads}",
                        ],
                    )
                )
            figures |= {
                "correction_steps": collected.interventions,
                "correction_success": collected.success_rate,
                "finetuned_training": self._success(tuned, 0).success_rate,
                "finetuned_heldout": self._success(tuned, HELD_OUT_SEED).success_rate,
            }
        return figures

    def references(self) -> list[tuple[str, Callable[[], None]]]:
        return [("expert on both sets of variations", lambda: _expert_rates(self.config, self.out))]

    def write_results(self, results: list[dict[str, Any]], seconds: float) -> Path:
        return _write_results(
            self.config, self.out, results, _expert_rates(self.config, self.out), seconds
        )


def run(config: Config, out: str | Path, on_progress: Progress | None = None) -> Path:
    """Do every missing step of the experiment in `out`, then write the results; returns the
    path of `results.md`."""
    return run_experiment(RTHExperiment(config, out), on_progress)


def _suite(config: Config, task_seed: int = 0) -> Any:
    suite = envs.suite(config.suite, seed=task_seed)
    return suite.subset(config.tasks) if config.tasks else suite


def heldout_action_mse(folder: Path, store: Path) -> float:
    """Mean squared error, in the env's action units, of the action the policy at `folder`
    takes in each state of `store`'s episodes against the recorded one: the policy acts as it
    would (its own phrase for RT-H, its observation history), on the expert's states."""
    import torch

    from il.data.store import DemoStore
    from il.policies.registry import load_policy

    policy = load_policy(folder)
    policy.set_act_ahead(0)
    demos = DemoStore.open(str(store))
    meta = demos.episode_meta()
    errors = []
    with torch.no_grad():
        for i in range(demos.num_episodes):
            steps = demos.read_episode(i, ["obs/state", "action"])
            policy.reset(task=str(meta["task"][i]) if policy.spec.tasks else None, seed=i)
            for state, action in zip(steps["obs/state"], steps["action"], strict=True):
                taken = np.asarray(policy.act({"state": state}), dtype=np.float64)
                errors.append(float(np.mean((taken - action) ** 2)))
    return float(np.mean(errors))


def _expert_rates(config: Config, out: Path) -> dict[str, float]:
    import json

    from il.evaluate import evaluate
    from il.policies.expert import expert_for_task

    cached = out / "expert.json"
    if cached.exists():
        return json.loads(cached.read_text())
    rates = {}
    for name, task_seed in (("training", 0), ("heldout", HELD_OUT_SEED)):
        report = evaluate(
            _suite(config, task_seed),
            expert_for_task,
            policy_name="expert",
            episodes_per_task=config.eval_episodes,
            workers=config.workers,
        )
        rates[name] = report.success_rate
    write_json(cached, rates)
    return rates


def _weakest_tasks(per_seed: list[dict[str, float]], shown: int = 3) -> str:
    """The tasks the corrector helped least, with their success over seeds: where words were
    not enough."""
    tasks = {t for rates in per_seed for t in rates}
    mean = {t: float(np.mean([rates[t] for rates in per_seed if t in rates])) for t in tasks}
    worst = sorted(mean, key=lambda t: (mean[t], t))[:shown]
    return ", ".join(f"{t} {100 * mean[t]:.0f}%" for t in worst)


def _write_results(
    config: Config,
    out: Path,
    results: list[dict[str, Any]],
    expert: dict[str, float],
    seconds: float,
) -> Path:
    n = config.eval_episodes
    sharing = ResultTable("Success", column_name="variations")
    mse = ResultTable(
        "Held-out action error", column_name="measure", unit="squared action units", scale=1.0
    )
    online = ResultTable(
        "Success with and without the simulated corrector", column_name="variations"
    )
    learning = ResultTable(
        f"After fine-tuning on {config.correction_episodes} correction episodes per task",
        column_name="variations",
    )
    chart = ResultTable("Success", column_name="variations")
    for r in sorted(results, key=lambda r: (r["seed"], r["method"])):
        m = r["method"]
        sharing.add(m, "training variations", r["success_training"])
        sharing.add(m, "held-out variations", r["success_heldout"])
        mse.add(m, "action MSE (held-out demos)", r["heldout_action_mse"])
        chart.add(m, "training", r["success_training"])
        chart.add(m, "held-out", r["success_heldout"])
        if "success_training_corrected" in r:
            for variations, column in (("training", "training"), ("heldout", "held-out")):
                online.add(f"{m}, alone", column, r[f"success_{variations}"])
                online.add(f"{m}, corrected", column, r[f"success_{variations}_corrected"])
            chart.add(m, "held-out, corrected online", r["success_heldout_corrected"])
        if "finetuned_heldout" in r:
            tuned = FINETUNE[m][0]
            learning.add(f"{m} (before)", "training", r["success_training"])
            learning.add(f"{m} (before)", "held-out", r["success_heldout"])
            learning.add(tuned, "training", r["finetuned_training"])
            learning.add(tuned, "held-out", r["finetuned_heldout"])
            chart.add(m, "held-out, after fine-tune", r["finetuned_heldout"])
    png = chart.bar_chart(
        out / "success.png",
        ylabel="success (%)",
        reference=[(f"expert, held-out {100 * expert['heldout']:.0f}%", expert["heldout"])],
    )
    corrected = {
        v: [r[f"corrected_steps_per_episode_{v}"] for r in results if f"tasks_{v}_corrected" in r]
        for v in ("training", "heldout")
    }
    weakest = _weakest_tasks(
        [r["tasks_heldout_corrected"] for r in results if "tasks_heldout_corrected" in r]
    )
    collected = {
        m: [r["correction_steps"] for r in results if r["method"] == m and "correction_steps" in r]
        for m in config.methods
    }
    tables = {
        "sharing": sharing.to_json(),
        "action_mse": mse.to_json(),
        "online": online.to_json(),
        "learning": learning.to_json(),
    }
    summary = results_summary(config, results, seconds, {"expert": expert, "tables": tables})
    write_json(out / "results.json", summary)
    name = config.suite.split("/", 1)[1]
    lines = [
        f"# RT-H vs flat BC on {name} from state",
        "",
        f"Training: {config.demos_per_task} expert demos per task on the variations of benchmark "
        f"seed 0; {config.steps} steps, batch {config.batch_size}, lr {config.lr}, MLP "
        f"{config.hidden}, state noise {config.obs_noise}, {config.seeds} seeds. Evaluation: "
        f"{n} episodes per task on the training variations (seed 0, episodes 0-{n - 1}) and on "
        f"held-out variations (benchmark seed {HELD_OUT_SEED}). Action error: "
        f"{config.heldout_demos} expert demos per task on the held-out variations.",
        "",
        sharing.markdown(),
        "",
        mse.markdown(digits=4),
        "",
        f"Scripted expert: {100 * expert['training']:.1f}% on the training variations, "
        f"{100 * expert['heldout']:.1f}% on the held-out ones.",
        "",
    ]
    if online.rows:
        lines += [
            f"## Online correction (patience {config.patience}, hold {config.hold})",
            "",
            online.markdown(),
            "",
            "Corrected steps per episode: "
            + "; ".join(
                f"{name} {np.mean(corrected[v]):.1f} (per seed: "
                f"{', '.join(f'{c:.1f}' for c in corrected[v])})"
                for v, name in (("training", "training variations"), ("heldout", "held-out"))
            )
            + ".",
            "",
            f"Weakest tasks on the held-out variations with the corrector: {weakest}.",
            "",
        ]
    if learning.rows:
        spent = "; ".join(
            f"{m}: {', '.join(map(str, v))} corrected steps" for m, v in collected.items() if v
        )
        lines += [
            "## Learning from corrections",
            "",
            learning.markdown(),
            "",
            f"Corrections collected on the training variations ({spent}).",
            "",
        ]
    train_s, eval_s = summary["seconds"]["training"], summary["seconds"]["evaluation"]
    lines += [
        f"![success]({png.name})",
        "",
        f"Training {train_s / 60:.1f} min, evaluation with corrections and fine-tunes "
        f"{eval_s / 60:.1f} min ({len(results)} runs).",
        "",
    ]
    path = out / "results.md"
    path.write_text("\n".join(lines))
    return path
