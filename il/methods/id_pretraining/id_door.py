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
   are used and initialises the head; `scratch` and `state` are the references.
4. Evaluation (`il eval`): `eval_episodes` door-lock episodes per seed, reset with seeds
   `eval_seed...`, whose variations are disjoint from the demonstrations' (a task has 50
   variations, and seed s plays variation s mod 50).

Everything lands in the output folder: both stores, the encoders (an `il pretrain` run folder
per objective, with its checkpoint and metrics), a run folder per (method, demos, seed) with its
checkpoint and `result.json`, and `results.md`, `results.json`, `success.png`.
A re-run skips what is finished.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

import envs
from il.experiments import begin, finished, machine, start_over_unless
from il.experiments.report import ResultTable, write_json

__all__ = ["Config", "run"]

METHODS = ("id", "bc", "fd-implicit", "contrastive", "fd-explicit", "scratch", "state")
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
    image_size: int = 64
    max_episode_steps: int = 150
    """Episode cap for recording and evaluation (the paper's 250; the experts finish door
    tasks in under 100 steps)."""
    pretrain_episodes_per_task: int = 30
    """Pretraining episodes per task (the paper's 1000 in all)."""
    action_noise: float = 0.2
    """Std of the Gaussian noise on the experts' executed actions in the pretraining corpus."""
    demos: list[int] = field(default_factory=lambda: [10])
    """Numbers of fine-tuning demos compared (the paper's 2, 5, 10, 20)."""
    demo_seed: int = 25
    """Episode seed of the first fine-tuning demo; demos use seeds demo_seed.. ."""
    eval_episodes: int = 20
    eval_seed: int = 0
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seeds: int = 5
    """Fine-tuning seeds per (method, demos), as the paper's 5; each encoder is pretrained
    once."""
    pretrain_steps: int = 5000
    """Steps of every objective (the paper's 100k; 5000 of batch 64 took 9 to 36 minutes an
    objective on two CPU cores shared with other jobs, the five 88 minutes together)."""
    pretrain_batch: int = 64
    """(The paper's 256.)"""
    channels: list[int] = field(default_factory=lambda: [16, 32, 32, 32])
    """Conv channels of the encoder (the paper's 32, 64, 128, 256: 6× slower on a CPU)."""
    finetune_steps: int = 2000
    """Head steps on the pre-encoded demos (the paper's 10k)."""
    scratch_steps: int = 2000
    """End-to-end steps of the `scratch` reference: as many as the heads of the pretrained
    encoders get, so that the reference is not undertrained."""
    finetune_batch: int = 64
    threads: int = 2
    """torch threads for training."""
    workers: int = 2
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
        demo_vars = {(self.demo_seed + i) % VARIATIONS for i in range(max(self.demos))}
        eval_vars = {(self.eval_seed + i) % VARIATIONS for i in range(self.eval_episodes)}
        if demo_vars & eval_vars:
            raise ValueError(
                "the demos' and the evaluation episodes' variations overlap (seed s plays "
                f"variation s mod {VARIATIONS}); move demo_seed or eval_seed apart"
            )
        envs.suite(f"metaworld/MT1/{self.finetune_task}")  # a bad name fails here, in one line


_SELECTING = ("methods", "seeds", "demos")
"""Fields that only choose which runs to do; the others change what a run measures."""


def run(
    config: Config,
    out: str | Path,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> Path:
    """Do every missing step of the experiment in `out`, then write the results; returns the
    path of `results.md`. `on_progress(done, total, label)` follows the steps."""
    out = begin(config, out, _SELECTING)
    start = time.perf_counter()
    objectives = [m for m in config.methods if m not in ("scratch", "state")]
    jobs = [(m, n, s) for m in config.methods for n in config.demos for s in range(config.seeds)]
    total = 2 + len(objectives) + len(jobs)
    report = on_progress or (lambda done, total, label: None)
    pretrain_store, finetune_store = out / "data" / "pretrain.zarr", out / "data" / "finetune.zarr"
    report(0, total, "recording the pretraining corpus")
    _record(config, pretrain_store, config.pretrain_tasks, config.pretrain_episodes_per_task, 0)
    report(1, total, f"recording {config.finetune_task} demos")
    _record(config, finetune_store, [config.finetune_task], max(config.demos), config.demo_seed)
    encoders: dict[str, dict[str, Any]] = {}
    for i, objective in enumerate(objectives):
        report(2 + i, total, f"pretraining {objective}")
        encoders[objective] = _pretrain(config, out, pretrain_store, objective)
    results = []
    for i, (method, n, seed) in enumerate(jobs):
        report(2 + len(objectives) + i, total, f"{method}, {n} demos, seed {seed}")
        results.append(_finetune_and_evaluate(config, out, finetune_store, method, n, seed))
    expert = _expert_rate(config)
    report(total, total, "writing results")
    return _write_results(config, out, results, encoders, expert, time.perf_counter() - start)


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


def _finetune_and_evaluate(
    config: Config, out: Path, store: Path, method: str, n: int, seed: int
) -> dict[str, Any]:
    from il.evaluate import evaluate_checkpoint
    from il.methods.id_pretraining.pipeline import FewShotConfig, fewshot

    folder = out / "runs" / method / f"{n}-demos" / f"seed{seed}"
    if (done := finished(folder)) is not None:
        return done
    t0 = time.perf_counter()
    if not start_over_unless(folder, CHECKPOINT):
        fc = FewShotConfig(
            encoder=method if method in ("scratch", "state") else str(out / "encoders" / method),
            data=str(store),
            out=str(folder),
            demos=n,
            camera=f"obs/image/{config.camera}",
            steps=config.finetune_steps,
            scratch_steps=config.scratch_steps,
            batch_size=config.finetune_batch,
            seed=seed,
            threads=config.threads,
        )
        fc.scratch_encoder.channels = list(config.channels)
        fewshot(fc)
    t1 = time.perf_counter()
    report = evaluate_checkpoint(
        folder,
        episodes_per_task=config.eval_episodes,
        seed=config.eval_seed,
        workers=config.workers,
    )
    torch.set_num_threads(config.threads)  # evaluation pins one thread per worker
    result = {
        "method": method,
        "demos": n,
        "seed": seed,
        "success": report.success_rate,
        "episodes": sum(len(t.episodes) for t in report.tasks),
        "train_seconds": t1 - t0,
        "eval_seconds": time.perf_counter() - t1,
    }
    write_json(folder / "result.json", result)
    return result


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
    train_s = sum(r["train_seconds"] for r in results)
    eval_s = sum(r["eval_seconds"] for r in results)
    pretrain_s = sum(m.get("seconds", 0.0) for m in encoders.values())
    write_json(
        out / "results.json",
        {
            "config": asdict(config),
            "expert_success": expert,
            "table": table.to_json(),
            "pretraining": encoders,
            "runs": results,
            "seconds": {
                "total_this_invocation": seconds,
                "pretraining": pretrain_s,
                "finetuning": train_s,
                "evaluation": eval_s,
            },
            "machine": machine(config.threads),
        },
    )
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
