"""Inverse-dynamics pretraining on the Meta-World door split: which pretraining objective gives
an image encoder that lets BC learn a new task from a few demonstrations?

The paper's claim (Brandfonbrener, Nachum & Bruna 2023): a frozen encoder pretrained by
inverse dynamics on other tasks' demonstrations beats end-to-end BC from scratch on the few
demos, and BC, forward-dynamics and contrastive pretraining do not reliably do so.

Protocol, all through il's own pieces:

1. Data (`il record`): the scripted experts on door-open, door-close and door-unlock (the
   pretraining corpus, optionally with Gaussian action noise) and on door-lock (the few-shot
   store, no noise), one camera at `image_size`. door-lock never enters the pretraining store,
   and fine-tuning refuses an encoder whose pretraining data held its task.
2. Pretraining (`il pretrain`): each objective once, on the same corpus, same steps and batch.
3. Fine-tuning (`il fewshot`) for each number of demos and seed: the seed draws which demos
   of the pool of `demo_pool` door-lock episodes are used, as the paper draws its few shots,
   and initialises the head; `scratch` and `state` are the references.
4. Evaluation (`il eval`): `eval_episodes` door-lock episodes per seed, reset with seeds
   `eval_seed...`, whose variations are disjoint from the demonstrations' (a task has 50
   variations, and seed s plays variation s mod 50).

Everything lands in the output folder: both stores, the encoders (an `il pretrain` run folder
per objective, with its checkpoint and metrics), a run folder per (method, demos, seed) with its
checkpoint and `result.json`, and `results.md`, `results.json`, `success.png`.
A re-run skips what is finished.
"""

from __future__ import annotations

import functools
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
    start_over_unless,
)

__all__ = ["Config", "run"]

REFERENCES = ("scratch", "state")
"""The methods that need no pretrained encoder."""
METHODS = ("id", "bc", "fd-implicit", "contrastive", "fd-explicit", *REFERENCES)
"""Pretraining objectives, then the two references (no pretraining)."""
VARIATIONS = 50
"""Variations per Meta-World task: episode seed s plays variation s mod 50."""
CHECKPOINT = "checkpoints/last/policy.json"
"""What a finished run (pretraining or fine-tuning) leaves: its one, final checkpoint."""


@dataclass
class Config:
    """Every field can be set as `key=value` on the command line. The defaults are sized for
    about an hour on two idle CPU cores (measured: 2 h 13 min on two cores shared with two or
    three other jobs); the paper's sizes are in the comments."""

    pretrain_tasks: list[str] = field(
        default_factory=lambda: ["door-open-v3", "door-close-v3", "door-unlock-v3"]
    )
    finetune_task: str = "door-lock-v3"
    camera: str = "corner"
    """The camera (the paper's corner2 shows the door small at 64 px; corner shows it large)."""
    image_size: int = field(default=64, metadata=limits(at_least=8))
    max_episode_steps: int = field(default=150, metadata=limits(at_least=1))
    """Episode cap for recording and evaluation (the paper's 250; the experts finish door
    tasks in under 100 steps)."""
    pretrain_episodes_per_task: int = field(default=30, metadata=limits(at_least=1))
    """Pretraining episodes per task (the paper's 1000 in all)."""
    action_noise: float = field(default=0.2, metadata=limits(at_least=0))
    """Std of the Gaussian noise on the experts' executed actions in the pretraining corpus."""
    demos: list[int] = field(default_factory=lambda: [10], metadata=limits(at_least=1))
    """Numbers of fine-tuning demos compared (the paper's 2, 5, 10, 20)."""
    demo_seed: int = field(default=25, metadata=limits(at_least=0))
    """Episode seed of the first door-lock episode of the pool; the pool uses seeds
    demo_seed.. ."""
    demo_pool: int = field(default=25, metadata=limits(at_least=1))
    """Door-lock episodes recorded, from which each seed draws its demos (at least the
    largest of `demos`): with a pool as large as the demos, every seed would train on the same
    demos and differ only in initialisation."""
    eval_episodes: int = field(default=20, metadata=limits(at_least=1))
    eval_seed: int = field(default=0, metadata=limits(at_least=0))
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seeds: int = field(default=5, metadata=limits(at_least=1))
    """Fine-tuning seeds per (method, demos), as the paper's 5; each encoder is pretrained
    once."""
    pretrain_steps: int = field(default=5000, metadata=limits(at_least=1))
    """Steps of every objective (the paper's 100k; 5000 of batch 64 took 9 to 36 minutes an
    objective on two CPU cores shared with other jobs, the five 88 minutes together)."""
    pretrain_batch: int = field(default=64, metadata=limits(at_least=2))
    """(The paper's 256.)"""
    channels: list[int] = field(
        default_factory=lambda: [16, 32, 32, 32], metadata=limits(at_least=1)
    )
    """Conv channels of the encoder (the paper's 32, 64, 128, 256: 6× slower on a CPU)."""
    finetune_steps: int = field(default=2000, metadata=limits(at_least=1))
    """Head steps on the pre-encoded demos (the paper's 10k)."""
    scratch_steps: int = field(default=2000, metadata=limits(at_least=1))
    """End-to-end steps of the `scratch` reference: as many as the heads of the pretrained
    encoders get, so that the reference is not undertrained."""
    finetune_batch: int = field(default=64, metadata=limits(at_least=1))
    threads: int = field(default=2, metadata=limits(at_least=0))
    """torch threads for training."""
    workers: int = field(default=2, metadata=limits(at_least=1))
    """Evaluation processes."""

    def check(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; methods: {', '.join(METHODS)}")
        if self.finetune_task in self.pretrain_tasks:
            raise ValueError(
                f"finetune_task {self.finetune_task} is one of pretrain_tasks; the split needs "
                "a task the encoders never saw"
            )
        if not self.demos:
            raise ValueError("demos is empty; give numbers of fine-tuning demos, e.g. [10]")
        if self.demo_pool < max(self.demos):
            raise ValueError(
                f"demo_pool={self.demo_pool} is smaller than demos={max(self.demos)}; "
                "each seed draws its demos from the pool"
            )
        demo_vars = {(self.demo_seed + i) % VARIATIONS for i in range(self.demo_pool)}
        eval_vars = {(self.eval_seed + i) % VARIATIONS for i in range(self.eval_episodes)}
        if demo_vars & eval_vars:
            raise ValueError(
                "the demos' and the evaluation episodes' variations overlap (seed s plays "
                f"variation s mod {VARIATIONS}); move demo_seed or eval_seed apart"
            )
        envs.suite(f"metaworld/MT1/{self.finetune_task}")  # a bad name fails here, in one line


class DoorExperiment(Experiment):
    Config = Config
    selecting = ("methods", "seeds", "demos")
    condition = "demos"
    trained = CHECKPOINT

    def __init__(self, config: Config, out: str | Path) -> None:
        super().__init__(config, out)
        self.pretrain_store = self.out / "data" / "pretrain.zarr"
        self.finetune_store = self.out / "data" / "finetune.zarr"
        self.encoders: dict[str, dict[str, Any]] = {}
        """Each pretrained encoder's metrics, by objective."""

    def preparation(self) -> list[tuple[str, Callable[[], None]]]:
        c = self.config
        steps = [
            (
                "recording the pretraining corpus",
                lambda: _record(
                    c, self.pretrain_store, c.pretrain_tasks, c.pretrain_episodes_per_task, 0
                ),
            ),
            (
                f"recording {c.finetune_task} demos",
                lambda: _record(
                    c, self.finetune_store, [c.finetune_task], c.demo_pool, c.demo_seed
                ),
            ),
        ]
        for objective in c.methods:
            if objective not in REFERENCES:
                steps.append(
                    (f"pretraining {objective}", functools.partial(self._pretrain, objective))
                )
        return steps

    def _pretrain(self, objective: str) -> None:
        self.encoders[objective] = _pretrain(self.config, self.out, self.pretrain_store, objective)

    def runs(self) -> list[Run]:
        c = self.config
        return [
            Run(
                m,
                n,
                s,
                self.out / "runs" / m / f"{n}-demos" / f"seed{s}",
                f"{m}, {n} demos, seed {s}",
            )
            for m in c.methods
            for n in c.demos
            for s in range(c.seeds)
        ]

    def train(self, run: Run) -> None:
        from il.methods.id_pretraining.pipeline import FewShotConfig, fewshot

        c = self.config
        encoder = (
            run.method if run.method in REFERENCES else str(self.out / "encoders" / run.method)
        )
        fc = FewShotConfig(
            encoder=encoder,
            data=str(self.finetune_store),
            out=str(run.folder),
            demos=run.condition,
            camera=f"obs/image/{c.camera}",
            steps=c.finetune_steps,
            scratch_steps=c.scratch_steps,
            batch_size=c.finetune_batch,
            seed=run.seed,
            threads=c.threads,
        )
        fc.scratch_encoder.channels = list(c.channels)
        fewshot(fc)

    def evaluate(self, run: Run) -> dict[str, Any]:
        from il.evaluate import evaluate_checkpoint

        c = self.config
        report = evaluate_checkpoint(
            run.folder, episodes_per_task=c.eval_episodes, seed=c.eval_seed, workers=c.workers
        )
        return {
            "success": report.success_rate,
            "episodes": sum(len(t.episodes) for t in report.tasks),
        }

    def write_results(self, results: list[dict[str, Any]], seconds: float) -> Path:
        expert = _expert_rate(self.config)
        return _write_results(self.config, self.out, results, self.encoders, expert, seconds)


def run(config: Config, out: str | Path, on_progress: Progress | None = None) -> Path:
    """Do every missing step of the experiment in `out`, then write the results; returns the
    path of `results.md`. `on_progress(done, total, label)` follows the steps."""
    return run_experiment(DoorExperiment(config, out), on_progress)


def _record(config: Config, store: Path, tasks: list[str], episodes: int, seed: int) -> None:
    from il.record import record_expert

    if len(tasks) == 1:  # its own MT1 suite: the fine-tuned policy then evaluates on it alone
        suite = envs.suite(f"metaworld/MT1/{tasks[0]}")
        noise = 0.0
    else:
        mt50 = envs.suite("metaworld/MT50")
        suite = type(mt50)(mt50.name, mt50.split, tuple(t for t in mt50.tasks if t.name in tasks))
        noise = config.action_noise
    record_expert(
        suite,
        str(store),
        episodes_per_task=episodes,
        obs=("state", f"image/{config.camera}"),
        image_size=config.image_size,
        max_episode_steps=config.max_episode_steps,
        only_success=noise == 0.0,
        workers=config.workers,
        seed=seed,
        action_noise=noise,
    )


def _pretrain(config: Config, out: Path, store: Path, objective: str) -> dict[str, Any]:
    """The encoder run of `objective` (made unless finished); its figures from its metrics."""
    from il.methods.id_pretraining.pipeline import PretrainConfig, pretrain, pretraining_metrics

    folder = out / "encoders" / objective
    if not start_over_unless(folder, CHECKPOINT):
        pc = PretrainConfig(
            objective=objective,
            data=str(store),
            out=str(folder),
            camera=f"obs/image/{config.camera}",
            held_out=[config.finetune_task],
            steps=config.pretrain_steps,
            batch_size=config.pretrain_batch,
            threads=config.threads,
        )
        pc.encoder.channels = list(config.channels)
        pretrain(pc)
    return pretraining_metrics(folder)


def _expert_rate(config: Config) -> float:
    from il.evaluate import evaluate
    from il.policies.expert import expert_for_task

    report = evaluate(
        envs.suite(f"metaworld/MT1/{config.finetune_task}"),
        expert_for_task,
        policy_name="expert",
        episodes_per_task=config.eval_episodes,
        seed=config.eval_seed,
        max_episode_steps=config.max_episode_steps,
    )
    return report.success_rate


def _write_results(
    config: Config,
    out: Path,
    results: list[dict[str, Any]],
    encoders: dict[str, dict[str, Any]],
    expert: float,
    seconds: float,
) -> Path:
    task = config.finetune_task.removesuffix("-v3")
    table = ResultTable(f"Success on {task}", column_name="fine-tuning demos")
    for r in sorted(results, key=lambda r: (r["demos"], r["seed"])):
        table.add(r["method"], str(r["demos"]), r["success"])
    chart = table.bar_chart(
        out / "success.png",
        ylabel=f"success on {task} (%)",
        reference=[(f"scripted expert {100 * expert:.0f}%", expert)],
    )
    pretrain_s = sum(m.get("seconds", 0.0) for m in encoders.values())
    figures = {"expert_success": expert, "table": table.to_json(), "pretraining": encoders}
    summary = results_summary(
        config,
        results,
        seconds,
        figures,
        training="finetuning",
        spent={"pretraining": pretrain_s},
    )
    write_json(out / "results.json", summary)
    train_s, eval_s = summary["seconds"]["finetuning"], summary["seconds"]["evaluation"]
    losses = [
        f"| {name} | {m['val_loss_start']:.4f} | {m['val_loss_end']:.4f} |"
        for name, m in encoders.items()
    ]
    text = "\n".join(
        [
            "# Inverse-dynamics pretraining: door split",
            "",
            f"Pretraining on {', '.join(config.pretrain_tasks)} "
            f"({config.pretrain_episodes_per_task} episodes each, action noise "
            f"{config.action_noise}); fine-tuning on {config.finetune_task}; camera "
            f"{config.camera} at {config.image_size}×{config.image_size}; encoder channels "
            f"{config.channels}; {config.pretrain_steps} pretraining steps (batch "
            f"{config.pretrain_batch}), {config.finetune_steps} head steps, "
            f"{config.scratch_steps} end-to-end steps for scratch; {config.seeds} seeds; "
            f"{config.eval_episodes} evaluation episodes per seed.",
            "",
            table.markdown(),
            "",
            f"Scripted expert on the same episodes: {100 * expert:.1f}%.",
            "",
            "Each objective's own loss on held-out pretraining episodes, before → after:",
            "",
            "| objective | start | end |",
            "| --- | --: | --: |",
            *losses,
            "",
            f"![success on {task}]({chart.name})",
            "",
            f"Pretraining {pretrain_s / 60:.1f} min, fine-tuning {train_s / 60:.1f} min, "
            f"evaluation {eval_s / 60:.1f} min ({len(results)} runs).",
            "",
        ]
    )
    path = out / "results.md"
    path.write_text(text)
    return path
