"""`il pretrain` and `il fewshot`: their flat configs, and their translation into runs of the
shared training loop (`il.train.train`).

`pretrain` checks the split (no `held_out` task in the data), decides which action explains a
transition (the store's `executed_action` for the dynamics objectives where it has one, else the
label), and trains the `encoder-pretraining` method (objectives.py); the run folder it returns
is the encoder checkpoint. `fewshot` reads that checkpoint (`read_encoder`), refuses an encoder
that saw the fine-tuning task, draws `demos` successful episodes with `seed`, and trains
`pretrained-bc` (policy.py) on exactly those episodes, with no validation split.

Both optimise as the paper does: Adam at a constant learning rate, no weight decay, warm-up,
decay, gradient clipping or EMA, in fp32; and both hold the images they learn from in RAM.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from il.config import check_config, limits, load_structured
from il.data.sampler import select_episodes
from il.data.store import DemoStore, StoreError
from il.methods.id_pretraining.objectives import (
    DYNAMICS,
    EncoderConfig,
    EncoderPretrainingConfig,
    PretrainError,
    check_objective,
    read_encoder,
)
from il.methods.id_pretraining.policy import PretrainedBCConfig
from il.train import ConfigError, DataConfig, RunConfig, TrainConfig, train

__all__ = [
    "REFERENCES",
    "EncoderConfig",
    "FewShotConfig",
    "PretrainConfig",
    "PretrainError",
    "draw_demos",
    "fewshot",
    "load_options",
    "pretrain",
    "pretraining_metrics",
]

REFERENCES = ("scratch", "state")
"""Fine-tuning references that use no pretrained encoder."""
StepCallback = Callable[[int, dict[str, float]], None]


# --- configs -------------------------------------------------------------------------------------
@dataclass
class PretrainConfig:
    """`il pretrain`: one objective on a multitask store. Every field can be set as `key=value`."""

    objective: str = "id"
    """id, bc, fd-implicit, contrastive or fd-explicit."""
    data: str = "data/door-pretrain.zarr"
    out: str = "runs/enc-id"
    """The run folder; its checkpoint is the encoder `il fewshot --encoder` takes."""
    camera: str = "obs/image/corner"
    """The store's image key the encoder sees."""
    tasks: list[str] | None = None
    """Only episodes of these tasks (default: all)."""
    held_out: list[str] = field(default_factory=list)
    """Tasks that must not appear in the pretraining data (the fine-tuning tasks): pretraining
    refuses to start if any of them is selected."""
    frame_gap: int = field(default=1, metadata=limits(at_least=1))
    """k of inverse dynamics: predict a_t from frames t and t+k."""
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    hidden: list[int] = field(default_factory=lambda: [256, 256], metadata=limits(at_least=1))
    """Widths of the objective's MLP head (ID and BC) or projections (InfoNCE)."""
    dropout: float = field(default=0.1, metadata=limits(at_least=0, below=1))
    temperature: float = field(default=1.0, metadata=limits(above=0))
    """InfoNCE temperature (fd-implicit, contrastive)."""
    steps: int = field(default=100_000, metadata=limits(at_least=1))
    batch_size: int = field(default=256, metadata=limits(at_least=2))
    lr: float = field(default=1e-3, metadata=limits(above=0))
    val_fraction: float = field(default=0.1, metadata=limits(at_least=0, below=1))
    """Episodes held out to measure the objective's loss on frames it never trained on."""
    val_every: int = field(default=0, metadata=limits(at_least=0))
    """Steps between validation losses (0: at the start and the end only)."""
    seed: int = field(default=0, metadata=limits(at_least=0))
    threads: int = field(default=0, metadata=limits(at_least=0))
    """torch CPU threads (0: torch's default)."""
    device: str = "cpu"

    def check(self) -> None:
        check_objective(self.objective, self.frame_gap)


@dataclass
class FewShotConfig:
    """`il fewshot`: a BC head on a few demos of a held-out task, over a frozen encoder."""

    encoder: str = "runs/enc-id"
    """An `il pretrain` run (or one of its checkpoints), or `scratch` (train the encoder end to
    end on the demos), or `state` (no images: the true state)."""
    data: str = "data/door-lock.zarr"
    out: str = "runs/ft-door-lock"
    demos: int = field(default=10, metadata=limits(at_least=1))
    """Demonstrations used (drawn by `seed` from the store's successful episodes)."""
    task: str | None = None
    """The task to imitate (default: the store's only task)."""
    camera: str = ""
    """Image key for `scratch` (default: the encoder's camera, else obs/image/corner)."""
    steps: int = field(default=10_000, metadata=limits(at_least=1))
    """Head steps; `scratch` trains the whole encoder for `scratch_steps` instead."""
    scratch_steps: int = field(default=2000, metadata=limits(at_least=1))
    batch_size: int = field(default=256, metadata=limits(at_least=1))
    lr: float = field(default=1e-3, metadata=limits(above=0))
    hidden: list[int] = field(default_factory=lambda: [256, 256], metadata=limits(at_least=1))
    dropout: float = field(default=0.1, metadata=limits(at_least=0, below=1))
    scratch_encoder: EncoderConfig = field(default_factory=EncoderConfig)
    """The encoder `scratch` trains (the pretrained runs take theirs from the checkpoint)."""
    seed: int = field(default=0, metadata=limits(at_least=0))
    threads: int = field(default=0, metadata=limits(at_least=0))
    device: str = "cpu"

    @property
    def train_steps(self) -> int:
        return self.scratch_steps if self.encoder == "scratch" else self.steps


def load_options(
    cls: type, yaml_path: str | Path | DictConfig | None, overrides: Sequence[str]
) -> Any:
    """`cls` defaults, then the YAML, then `key=value` overrides; an unknown key or a bad value
    is a one-line `PretrainError` naming it."""
    return load_structured(cls, yaml_path, overrides, PretrainError, example="steps=5000")


# --- pretraining ---------------------------------------------------------------------------------
def pretrain(config: PretrainConfig, on_step: StepCallback | None = None) -> Path:
    """Fit the encoder with `config.objective`; returns the run folder, whose checkpoint
    (`checkpoints/last`) is the encoder checkpoint and whose `metrics.csv` holds the held-out
    loss before and after (`pretraining_metrics`).

    The checkpoint records the tasks it saw (`spec.env.tasks`), so a fine-tuning run can refuse
    a task that was part of its pretraining data.
    """
    check_config(config)
    store = _open(config.data)
    if config.camera not in store.schema.keys:
        images = [k for k in store.schema.keys if k.startswith("obs/image/")]
        raise PretrainError(
            f"{store.path} has no {config.camera!r}; its cameras: {', '.join(images) or 'none'} "
            "(record with --obs state,image/<camera>)"
        )
    # Failed episodes are still transitions: every objective but BC learns from them as well.
    only_success = config.objective == "bc"
    episodes = _episodes(store, config.tasks, only_success)
    task_of = _tasks_of(store)
    leaked = sorted(set(task_of[episodes]) & set(config.held_out))
    if leaked:
        raise PretrainError(
            f"held-out task {', '.join(leaked)} is in the pretraining data {config.data}; "
            "pretrain on a store (or tasks=[...]) without it"
        )
    executed = config.objective in DYNAMICS and "executed_action" in store.schema.keys
    model = EncoderPretrainingConfig(
        objective=config.objective,
        encoder=config.encoder,
        hidden=list(config.hidden),
        dropout=config.dropout,
        temperature=config.temperature,
        frame_gap=config.frame_gap,
        camera=config.camera,
        action_key="executed_action" if executed else "action",
    )
    lengths = store.episode_ends[episodes] - store.episode_starts[episodes]
    if not np.any(lengths > model.future()):
        raise PretrainError(f"no episode of {config.data} is longer than frame_gap")
    run = RunConfig(
        policy="encoder-pretraining",
        out=config.out,
        data=DataConfig(
            path=config.data,
            obs=[config.camera],
            tasks=config.tasks,
            only_success=only_success,
            normalize={"action": "identity"},  # the objectives learn the raw actions
            memory_gb=_memory_gb(store, {config.camera, "action", model.action_key}),
        ),
        train=_plain_adam(
            steps=config.steps,
            batch_size=config.batch_size,
            lr=config.lr,
            seed=config.seed,
            threads=config.threads,
            device=config.device,
            val_fraction=config.val_fraction,
            val_every=config.val_every or config.steps,
            val_at_start=True,
            val_batches=4,
        ),
        model=model,
    )
    _train(run, on_step)
    return Path(config.out)


def pretraining_metrics(run: str | Path) -> dict[str, Any]:
    """A pretraining run's figures from its `metrics.csv`: the last training loss, the held-out
    loss at the start and the end (NaN without held-out episodes), the loop's seconds and the
    held-out history."""
    with open(Path(run) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    val = [(int(r["step"]), float(r["value"])) for r in rows if r["phase"] == "val"]
    last = {r["metric"]: (int(r["step"]), float(r["value"])) for r in rows if r["phase"] == "train"}
    step, rate = last.get("steps_per_second", (0, math.nan))
    return {
        "train_loss": last.get("loss", (0, math.nan))[1],
        "val_loss_start": val[0][1] if val and val[0][0] == 0 else math.nan,
        "val_loss_end": val[-1][1] if val else math.nan,
        "seconds": step / rate if rate > 0 else math.nan,
        "history": [{"step": s, "val_loss": v} for s, v in val],
    }


# --- few-shot fine-tuning ------------------------------------------------------------------------
def fewshot(config: FewShotConfig, on_step: StepCallback | None = None) -> Path:
    """Fit a `PretrainedBCPolicy` on `config.demos` demonstrations; returns its checkpoint.

    With a pretrained encoder the encoder is loaded before the first step and stays frozen;
    `scratch` trains encoder and head together with random crops; `state` fits the head on the
    normalized state.
    """
    check_config(config)
    store = _open(config.data)
    task_of = _tasks_of(store)
    task = config.task
    if task is None:
        present = sorted(set(task_of))
        if len(present) != 1:
            raise PretrainError(
                f"{config.data} holds {len(present)} tasks ({', '.join(present)}); "
                "choose one with task=<name>"
            )
        task = present[0]
    pretrained = None
    if config.encoder not in REFERENCES:
        pretrained = read_encoder(config.encoder)
        if task in pretrained.tasks:
            raise PretrainError(
                f"fine-tune task {task} is in the pretraining data of {config.encoder}; "
                "few-shot transfer needs a task the encoder never saw"
            )
    episodes = _episodes(store, [task], only_success=True)
    if len(episodes) < config.demos:
        raise PretrainError(
            f"{config.data} has {len(episodes)} successful episodes of {task}, fewer than "
            f"demos={config.demos}; record more"
        )
    chosen = draw_demos(episodes, config.demos, config.seed)
    camera = (pretrained.camera if pretrained else "") or config.camera or "obs/image/corner"
    key = "obs/state" if config.encoder == "state" else camera
    if key not in store.schema.keys:
        raise PretrainError(f"{config.data} has no {key!r}; record it with --obs")
    if pretrained is not None:
        stored = list(store.schema.keys[key].shape)
        if stored != pretrained.image_shape:
            raise PretrainError(
                f"{config.data} has {key} images of {stored}; the encoder was pretrained on "
                f"{pretrained.image_shape}: record at the same --image-size"
            )
    if config.encoder == "state":
        encoder, objective = None, "state"
    elif pretrained is None:
        encoder, objective = config.scratch_encoder, "scratch"
    else:
        encoder, objective = pretrained.encoder, pretrained.objective
    run = RunConfig(
        policy="pretrained-bc",
        out=config.out,
        data=DataConfig(
            path=config.data,
            obs=[key],
            tasks=[task],
            only_success=True,
            episodes=[int(e) for e in chosen],
            normalize={"action": "min_max", key: "mean_std" if key == "obs/state" else "identity"},
            memory_gb=_memory_gb(store, [key, "action"]),
        ),
        train=_plain_adam(
            steps=config.train_steps,
            batch_size=config.batch_size,
            lr=config.lr,
            seed=config.seed,
            threads=config.threads,
            device=config.device,
            val_fraction=0.0,
        ),
        model=PretrainedBCConfig(
            encoder=encoder,
            hidden=list(config.hidden),
            dropout=config.dropout,
            objective=objective,
            pretraining_tasks=list(pretrained.tasks if pretrained else []),
            pretrained=str(pretrained.folder.resolve()) if pretrained else "",
        ),
    )
    return _train(run, on_step)


# --- shared --------------------------------------------------------------------------------------
def _plain_adam(**fields: Any) -> TrainConfig:
    """The paper's optimisation on the shared loop: AdamW without weight decay is Adam; a
    constant learning rate; no gradient clipping or EMA; fp32; one checkpoint, at the end."""
    return TrainConfig(
        weight_decay=0.0,
        warmup_steps=0,
        min_lr_ratio=1.0,
        grad_clip=0.0,
        ema_decay=0.0,
        amp="off",
        save_every=fields["steps"],
        **fields,
    )


def _train(run: RunConfig, on_step: StepCallback | None) -> Path:
    checkpoints = Path(run.out) / "checkpoints"
    if checkpoints.exists() and any(checkpoints.iterdir()):
        raise PretrainError(f"{run.out} already holds a run; choose another --out or remove it")

    def report(step: int, metrics: dict[str, float]) -> None:
        if on_step is not None:
            loss = metrics.get("mse", metrics.get("info_nce", math.nan))
            on_step(step, {"loss": loss})

    try:
        return train(run, on_step=report)
    except ConfigError as e:
        raise PretrainError(str(e)) from None


def draw_demos(episodes: np.ndarray, demos: int, seed: int) -> np.ndarray:
    """The few shots of one fine-tuning seed: `demos` of `episodes`, drawn by `seed`, so that
    seeds differ in what they learn from and not only in their initialisation."""
    return np.sort(np.random.default_rng(seed).permutation(episodes)[:demos])


def _open(path: str) -> DemoStore:
    try:
        return DemoStore.open(path)
    except StoreError as e:
        raise PretrainError(str(e)) from None


def _tasks_of(store: DemoStore) -> np.ndarray:
    return np.array([str(t) for t in store.episode_meta()["task"]])


def _episodes(store: DemoStore, tasks: Sequence[str] | None, only_success: bool) -> np.ndarray:
    try:
        episodes = select_episodes(store, tasks=tasks, success=True if only_success else None)
    except StoreError as e:
        raise PretrainError(str(e)) from None
    if len(episodes) == 0:
        which = "successful episodes" if only_success else "episodes"
        raise PretrainError(f"no {which} in {store.path} to learn from")
    return episodes


def _memory_gb(store: DemoStore, keys: Iterable[str]) -> float:
    """RAM that holds `keys` of the whole store decoded, so the sampler never reads images from
    disk during training (as the frames of a CPU-sized corpus fit: 15k frames at 64 px, 180 MB)."""
    total = 0
    for key in keys:
        spec = store.schema.keys[key]
        total += store.num_steps * int(np.prod(spec.shape)) * np.dtype(spec.dtype).itemsize
    return total / 2**30 + 0.01
