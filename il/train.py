"""`il train`: fit any policy to a DemoStore, on CPU, one GPU, or many through torchrun.

One loop for every method (it only ever calls `policy.loss`): AdamW with warm-up and a cosine
schedule, gradient clipping, an exponential moving average of the weights (the EMA weights are
what checkpoints hold and evaluation uses), AMP on CUDA, DDP when started by `torchrun`. A
method that starts from other weights (a pretrained encoder) loads them in
`Policy.on_train_start`, which a fresh run calls once before its first step.

Batches are drawn with replacement by a generator seeded with (seed, rank, step), so the data a
step sees depends on nothing but its number: a run resumed from a checkpoint sees exactly the
batches the uninterrupted run would have, and with the optimizer, scheduler, EMA and RNG states
restored it ends with the same weights.

A run folder holds `config.yaml` (the resolved config), `metrics.csv`, TensorBoard events,
`curves.png`, and `checkpoints/step_<N>/` with `last` pointing at the newest. It is written from
the end of the first step on, so a run that fails before that leaves no folder behind.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from il.config import check_limits, limits, load_yaml
from il.data.normalize import Normalizer
from il.data.sampler import WindowSampler, intact, select_episodes, split_episodes, window_spec
from il.data.store import DemoStore, StoreError
from il.policies import registry, text
from il.policies.base import CheckpointError, DataSpec, Policy

__all__ = ["ConfigError", "RunConfig", "TrainConfig", "load_config", "train"]


class ConfigError(Exception):
    """A config that cannot be used; the message names the key and the fix."""


@dataclass
class TrainConfig:
    """How to optimise. Every field can be set as `train.<field>=value`; a number outside its
    field's `limits` is refused when the config is loaded."""

    steps: int = field(default=20_000, metadata=limits(at_least=1))
    """Optimizer steps in total (a resumed run continues up to this number)."""
    batch_size: int = field(default=256, metadata=limits(at_least=1))
    """Windows per step and per process."""
    lr: float = field(default=1e-3, metadata=limits(above=0))
    weight_decay: float = field(default=1e-4, metadata=limits(at_least=0))
    warmup_steps: int = field(default=500, metadata=limits(at_least=0))
    """Linear warm-up of the learning rate, then a cosine decay to `lr * min_lr_ratio`."""
    min_lr_ratio: float = field(default=0.0, metadata=limits(at_least=0, at_most=1))
    grad_clip: float = field(default=1.0, metadata=limits(at_least=0))
    """Clip the gradient norm to this (0 = no clipping)."""
    ema_decay: float = field(default=0.999, metadata=limits(at_least=0, below=1))
    """Decay of the weights' moving average (0 = no EMA: checkpoints hold the raw weights)."""
    val_fraction: float = field(default=0.05, metadata=limits(at_least=0, below=1))
    """Fraction of episodes held out for the validation loss."""
    val_every: int = field(default=1000, metadata=limits(at_least=1))
    val_batches: int = field(default=8, metadata=limits(at_least=1))
    val_at_start: bool = False
    """Also measure the validation loss at step 0, before the first update (a fresh run)."""
    seed: int = field(default=0, metadata=limits(at_least=0))
    num_workers: int = field(default=0, metadata=limits(at_least=0))
    """DataLoader worker processes producing batches (0 = in the training process)."""
    log_every: int = field(default=100, metadata=limits(at_least=1))
    save_every: int = field(default=5000, metadata=limits(at_least=1))
    """Steps between checkpoints (the final one is always saved)."""
    eval_every: int = field(default=0, metadata=limits(at_least=0))
    """Steps between evaluations in the env (0 = none)."""
    eval_episodes_per_task: int = field(default=5, metadata=limits(at_least=1))
    eval_workers: int = field(default=1, metadata=limits(at_least=1))
    device: str = "auto"
    """auto (CUDA if present, else CPU), cpu, cuda, cuda:1, ..."""
    amp: str = "auto"
    """Mixed precision: auto (bf16 on CUDA, off on CPU), bf16, fp16, off."""
    compile: bool = False
    """torch.compile the policy (CUDA; slower to start)."""
    threads: int = field(default=0, metadata=limits(at_least=0))
    """torch CPU threads (0 = torch's default)."""


@dataclass
class DataConfig:
    """What to learn from."""

    path: str = "data/mt10.zarr"
    """The DemoStore (a path or an fsspec URL)."""
    obs: list[str] = field(default_factory=lambda: ["obs/state"])
    """Observation keys of the store the policy sees."""
    tasks: list[str] | None = None
    """Only episodes of these tasks (default: all)."""
    only_success: bool = True
    """Only successful episodes."""
    episodes: list[int] | None = None
    """Only these episodes, by index in the store (default: all that pass the other filters)."""
    normalize: dict[str, str] = field(default_factory=lambda: {"action": "min_max"})
    """Normalization mode per key; vector observations default to mean_std, images to none."""
    memory_gb: float = field(default=0.25, metadata=limits(at_least=0))
    """RAM for holding the store's keys decoded (smallest keys first; each DataLoader worker
    holds its own copy). A key that does not fit is decoded from disk chunk by chunk at every
    batch: for two 84x84 cameras at batch 64 that is about a quarter of the image preset's step
    on 2 cores, so give an image store's decoded size here when the machine has it."""
    skip_damaged: bool = False
    """Leave out episodes that do not read back as recorded (a chunk that does not decode, a
    checksum that does not match) instead of refusing the store (`il train --skip-damaged`)."""


@dataclass
class RunConfig:
    """A whole training run: `policy` names the method, `model` is that method's config."""

    policy: str = "bc"
    out: str = "runs/bc"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: Any = None
    init: str | None = None
    """A checkpoint to start from (`il finetune`): its weights, and its spec and normalizer, so
    the fine-tuned policy reads observations and tasks as the one it starts from."""


# --- configuration -------------------------------------------------------------------------------
def policy_class(name: str) -> type[Policy]:
    """The method's policy class; an unknown name is a `ConfigError` listing the known ones."""
    try:
        return registry.policy_class(name)
    except registry.UnknownMethod as e:
        raise ConfigError(str(e)) from None


def load_config(
    policy: str | None,
    yaml_path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    base: DictConfig | None = None,
) -> RunConfig:
    """Defaults of `policy`, then the YAML file, then `key=value` overrides; typo-proof: an
    unknown key or a value of the wrong type is a `ConfigError` naming it.

    `policy=None` takes the YAML's own `policy:` (else `bc`), so a preset is enough to say what
    it trains. A YAML may start from another with `base: <file>` (relative to itself) and list
    only what it changes, so a variant preset cannot drift from the one it extends."""
    loaded = load_yaml(yaml_path, ConfigError) if yaml_path is not None else None
    named = loaded.get("policy") if loaded is not None else None
    if policy is None:
        policy = str(named) if named is not None else "bc"
    elif named is not None and named != policy:
        raise ConfigError(f"{yaml_path} is a config for policy {named!r}, not {policy!r}")
    base = _schema(policy) if base is None else base
    try:
        if loaded is not None:
            base = OmegaConf.merge(base, loaded)
        base = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as e:
        raise ConfigError(_config_message(e, base)) from None
    config = _to_run_config(base, policy)
    check_run_config(config)
    return config


def check_run_config(config: RunConfig) -> None:
    """A `ConfigError` naming the first number outside its field's range (`train.lr must be a
    finite number > 0, got nan`): checked when a config is loaded, before any data is read, and
    again by `train` for configs built in code."""
    try:
        check_limits(config)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def finetune_config(
    method: str,
    checkpoint: str | Path,
    yaml_path: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> RunConfig:
    """A fine-tune's config: method `method` starting from `checkpoint`, whose model config
    (which its weights need) and observation keys it takes; then the YAML, then overrides, as
    `load_config` reads them; without a YAML, the method's own preset (what the fine-tune
    needs, e.g. every corrected episode kept whether it succeeded or not). The method must
    fine-tune the checkpoint's method."""
    from il.policies.base import read_description, resolve_checkpoint

    cls = policy_class(method)
    try:
        folder = resolve_checkpoint(checkpoint)
        description = read_description(folder)
    except CheckpointError as e:
        raise ConfigError(str(e)) from None
    started = str(description.get("policy"))
    if not cls.finetunes:
        raise ConfigError(
            f"{method} does not fine-tune a checkpoint; choose one of "
            f"{', '.join(n for n in registry.method_names() if policy_class(n).finetunes)}"
        )
    if started != cls.finetunes:
        raise ConfigError(f"{method} fine-tunes a {cls.finetunes} policy; {folder} holds {started}")
    start = [
        f"init={folder}",
        f"data.obs=[{','.join(description['spec']['obs_shapes'])}]",
        f"out=runs/{method}",
    ]
    base = _schema(method)
    known = set(base.model.keys())
    model = {k: v for k, v in description["config"].items() if k in known}
    base = OmegaConf.merge(base, {"model": model})
    if yaml_path is None:
        yaml_path = registry.preset(method)
    return load_config(method, yaml_path, [*start, *overrides], base=base)


def _schema(policy: str) -> DictConfig:
    cls = policy_class(policy)
    schema = OmegaConf.structured(RunConfig(policy=policy, out=f"runs/{policy}"))
    OmegaConf.set_struct(schema, False)
    schema.model = OmegaConf.structured(cls.Config)
    OmegaConf.set_struct(schema, True)
    return schema


def _config_message(error: OmegaConfBaseException, schema: DictConfig) -> str:
    key = getattr(error, "full_key", None) or ""
    text = str(error).splitlines()[0]
    if ("Key" in text and "not in" in text) or "Could not override" in text or "not found" in text:
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        node = OmegaConf.select(schema, parent) if parent else schema
        valid = ", ".join(f"{parent + '.' if parent else ''}{k}" for k in node) if node else ""
        return f"unknown config key {key!r}; valid keys here: {valid}"
    return f"bad config value for {key!r}: {text}"


def _to_run_config(cfg: DictConfig, policy: str) -> RunConfig:
    cls = policy_class(policy)
    data = OmegaConf.to_object(cfg)
    assert isinstance(data, RunConfig)
    if not isinstance(data.model, cls.Config):
        data.model = cls.Config(**data.model)  # type: ignore[call-arg]
    return data


def save_config(config: RunConfig, path: Path) -> None:
    """Written whole or not at all: a resumed run reads its config back from here."""
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(OmegaConf.to_yaml(OmegaConf.structured(config)))
    os.replace(staging, path)


# --- data ----------------------------------------------------------------------------------------
@dataclass
class TrainingData:
    spec: DataSpec
    normalizer: Normalizer
    train: WindowSampler
    val: WindowSampler | None
    train_tasks: np.ndarray  # (N,) task index of each training window
    val_tasks: np.ndarray | None


@dataclass(frozen=True)
class StartingPoint:
    """The checkpoint a fine-tune starts from: where, its spec and normalizer."""

    folder: Path
    spec: DataSpec
    normalizer: Normalizer
    policy: str


def starting_point(config: RunConfig) -> StartingPoint | None:
    """`config.init` read (spec and normalizer, not yet the weights), or None; a method that
    fine-tunes another's checkpoints (`Policy.finetunes`) needs one, of that method."""
    cls = policy_class(config.policy)
    if config.init is None:
        if cls.finetunes:
            raise ConfigError(
                f"{cls.name} fine-tunes a trained {cls.finetunes} policy: il finetune --method "
                f"{cls.name} --checkpoint RUN --data STORE"
            )
        return None
    from il.policies.base import read_description, resolve_checkpoint

    try:
        folder = resolve_checkpoint(config.init)
        description = read_description(folder)
    except CheckpointError as e:
        raise ConfigError(f"init: {e}") from None
    started = str(description.get("policy"))
    if started not in {cls.finetunes or cls.name, cls.name}:
        raise ConfigError(
            f"{cls.name} starts from a {cls.finetunes or cls.name} checkpoint; {folder} holds "
            f"{started}"
        )
    return StartingPoint(
        folder,
        DataSpec(**description["spec"]),
        Normalizer.from_json(description["normalizer"]),
        started,
    )


def prepare_data(
    config: RunConfig, policy_config: Any, start: StartingPoint | None = None
) -> TrainingData:
    """The run's samplers, spec and normalizer; a fine-tune (`start`) keeps its checkpoint's
    spec and normalizer and reads the store's tasks in that checkpoint's order."""
    try:
        store = DemoStore.open(config.data.path)
    except StoreError as e:
        raise ConfigError(str(e)) from None
    for key in [*config.data.obs, "action"]:
        if key not in store.schema.keys:
            raise ConfigError(
                f"{config.data.path} has no key {key!r}; data.obs takes keys of "
                f"{', '.join(k for k in store.schema.keys if k.startswith('obs/'))}"
            )
    # Per-step keys a method learns from besides observations and actions (e.g. its procedure).
    extra_keys = getattr(policy_class(config.policy), "extra_keys", None)
    extra = dict(extra_keys(policy_config)) if extra_keys is not None else {}
    missing = [k for k in extra if k not in store.schema.keys]
    if missing:
        fix = getattr(policy_class(config.policy), "extra_keys_fix", "record a store that has it")
        raise ConfigError(
            f"policy {config.policy} learns from {', '.join(missing)}, which {config.data.path} "
            f"does not hold; {fix.format(store=config.data.path)}"
        )
    try:
        episodes = select_episodes(
            store,
            tasks=config.data.tasks,
            success=True if config.data.only_success else None,
            episodes=config.data.episodes,
        )
    except StoreError as e:
        raise ConfigError(str(e)) from None
    if len(episodes) == 0:
        raise ConfigError(f"no episodes of {config.data.path} pass the data filters")
    train_eps, val_eps = split_episodes(episodes, config.train.val_fraction, config.train.seed)
    meta = store.episode_meta()
    episode_task = np.array([str(t) for t in meta["task"]])
    tasks = sorted(set(episode_task[episodes]))
    source_tasks = store.schema.source.get("tasks")
    if source_tasks and set(tasks) <= set(source_tasks):
        tasks = [t for t in source_tasks if t in set(tasks)]
    if start is not None:
        tasks = _starting_tasks(start, tasks, config.data.path)
    task_of_episode = np.array([tasks.index(t) if t in tasks else -1 for t in episode_task])
    instruction_of = {
        str(t): str(i) for t, i in zip(meta["task"], meta["instruction"], strict=True)
    }

    obs_horizon = int(getattr(policy_config, "obs_horizon", 1))
    action_horizon = int(getattr(policy_config, "action_horizon", 1))
    keys = window_spec(config.data.obs, obs_horizon, ["action"], action_horizon, extra)
    modes = {}
    for key in config.data.obs:
        is_image = len(store.schema.keys[key].shape) == 3
        modes[key] = config.data.normalize.get(key, "identity" if is_image else "mean_std")
    modes["action"] = config.data.normalize.get("action", "min_max")
    # A method may learn continuous extra keys (a procedure's positions) on normalized values.
    extra_modes = getattr(policy_class(config.policy), "extra_normalization", None)
    for key, mode in (extra_modes(policy_config) if extra_modes is not None else {}).items():
        modes[key] = config.data.normalize.get(key, mode)
    source = store.schema.source
    # Where the observation tells the tasks apart (a maze's walls), the policy gets no task
    # input, so it can be run on tasks it never saw.
    conditioned = len(tasks) > 1 and not source.get("task_in_observation", False)
    spec = DataSpec(
        obs_shapes={k: list(store.schema.keys[k].shape) for k in config.data.obs},
        action_dim=int(store.schema.keys["action"].shape[0]),
        tasks=tasks if conditioned else [],
        action=dict(store.schema.action),
        env={
            k: source[k]
            for k in ("env", "suite", "split", "task_seed", "image_size", "max_episode_steps")
            if k in source
        }
        | {"tasks": tasks},
        instructions=[instruction_of.get(t, "") for t in tasks] if conditioned else [],
        vocabularies={
            key: [str(word) for word in source[f"{key}_vocabulary"]]
            for key in extra
            if f"{key}_vocabulary" in source
        },
    )
    if start is not None:
        spec = _starting_spec(start, spec, config.data.path)
    if config.data.memory_gb < 0:
        raise ConfigError(f"data.memory_gb must be 0 or more, not {config.data.memory_gb}")
    memory = int(config.data.memory_gb * 2**30)
    train_sampler = WindowSampler(store.path, keys, train_eps, memory_bytes=memory)
    # a few batches every thousand steps: read from disk rather than hold a second copy
    val_sampler = WindowSampler(store.path, keys, val_eps) if len(val_eps) else None
    # Damaged episodes are refused (or left out) here, before the run folder exists.
    try:
        train_sampler, val_sampler = intact(
            [train_sampler, val_sampler],
            skip_damaged=config.data.skip_damaged,
            fix="pass --skip-damaged (data.skip_damaged=true) to train without them",
        )
    except StoreError as e:
        raise ConfigError(str(e)) from None
    assert train_sampler is not None
    if start is not None:
        normalizer = start.normalizer  # the weights learnt on these scales
    else:
        normalizer = Normalizer.from_store(store, modes, train_sampler.episodes)
    return TrainingData(
        spec,
        normalizer,
        train_sampler,
        val_sampler,
        task_of_episode[train_sampler.window_episodes],
        None if val_sampler is None else task_of_episode[val_sampler.window_episodes],
    )


def _starting_tasks(start: StartingPoint, tasks: list[str], path: str) -> list[str]:
    """A fine-tune's task order: its checkpoint's, which the task inputs were learnt in."""
    trained = start.spec.env.get("tasks") or start.spec.tasks
    unknown = [t for t in tasks if trained and t not in trained]
    if unknown:
        raise ConfigError(
            f"{path} holds episodes of {', '.join(unknown[:3])}, which {start.folder} was not "
            f"trained on; keep its tasks with data.tasks=[...]"
        )
    return list(trained) if trained else tasks


def _starting_spec(start: StartingPoint, spec: DataSpec, path: str) -> DataSpec:
    """The checkpoint's spec, once the store is seen to fit it; the store's vocabularies are
    added to its own, for a method to check that its labels mean what the checkpoint's do."""
    if spec.obs_shapes != start.spec.obs_shapes or spec.action_dim != start.spec.action_dim:
        raise ConfigError(
            f"{path} holds observations {spec.obs_shapes} and {spec.action_dim}-D actions; "
            f"{start.folder} was trained on {start.spec.obs_shapes} and "
            f"{start.spec.action_dim}-D actions"
        )
    if spec.action and start.spec.action and spec.action != start.spec.action:
        raise ConfigError(
            f"{path} holds actions of another convention than {start.folder} was trained on"
        )
    return dataclasses.replace(
        start.spec, vocabularies={**spec.vocabularies, **start.spec.vocabularies}
    )


class _Batches(torch.utils.data.IterableDataset):
    """Batches for steps `start, start+1, ...`; step s draws its windows with a generator
    seeded by (seed, rank, s). Worker k of n produces the steps s ≡ k (mod n), and the
    DataLoader interleaves workers in order, so the stream is the same for any worker count."""

    def __init__(
        self,
        sampler: WindowSampler,
        tasks: np.ndarray,
        batch_size: int,
        seed: int,
        rank: int,
        start: int,
    ) -> None:
        self.sampler, self.tasks, self.batch_size = sampler, tasks, batch_size
        self.seed, self.rank, self.start = seed, rank, start

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        step = self.start + worker
        while True:
            yield batch_at(self.sampler, self.tasks, self.batch_size, (self.seed, self.rank, step))
            step += workers


def batch_at(
    sampler: WindowSampler, tasks: np.ndarray, batch_size: int, seed: Sequence[int]
) -> dict[str, torch.Tensor]:
    indices = np.random.default_rng(list(seed)).integers(0, len(sampler), size=batch_size)
    batch = {k: torch.from_numpy(v) for k, v in sampler.batch(indices).items()}
    batch["task"] = torch.from_numpy(tasks[indices].astype(np.int64))
    return batch


# --- the loop ------------------------------------------------------------------------------------
class EMA:
    """Exponential moving average of a module's parameters and buffers, with the usual warm-up
    of the decay so that early averages are not dominated by the random initialisation.

    It is bound to the live module it copies: `update()` folds that module's current weights in.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0
        # Walking the module tree every step costs a few percent of a small model's step on a
        # CPU, so the pairs are listed once (the live model's tensors never change identity).
        self._ema_params = list(self.model.parameters())
        self._live_params = [p.detach() for p in model.parameters()]
        self._buffers = list(zip(self.model.buffers(), model.buffers(), strict=True))

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self._ema_params, self._live_params, 1 - d)
        for ema, live in self._buffers:
            ema.copy_(live)


def lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine

    return factor


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device={name} but no CUDA device is visible; use train.device=cpu"
        )
    return device


def amp_dtype(name: str, device: torch.device) -> torch.dtype | None:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    # YAML reads a bare `off` as false, which reaches this str field as "False"
    if name.lower() in ("off", "false", "fp32"):
        return None
    if name in ("bf16", "fp16"):
        return torch.bfloat16 if name == "bf16" else torch.float16
    raise ConfigError(f"train.amp must be auto, bf16, fp16 or off (fp32), got {name!r}")


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Distributed:
    """DDP when started by torchrun (WORLD_SIZE > 1): NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Distributed(dist.get_rank(), world, local)


def train(
    config: RunConfig,
    *,
    resume: bool = False,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> Path:
    """Train `config.policy` on `config.data`; returns the final checkpoint folder.

    The run folder's files (`config.yaml`, `metrics.csv`, TensorBoard events) are written once
    the first step has been taken, not before: a run that fails or is interrupted before it
    (data that cannot be read, a model that does not fit, Ctrl-C) leaves no folder that looks
    like a run, and a resumed run that fails so leaves its folder as it was."""
    check_run_config(config)
    tc = config.train
    dist_info = init_distributed(tc.device)
    device = pick_device(tc.device)
    if device.type == "cuda" and dist_info.world > 1:
        device = torch.device("cuda", dist_info.local_rank)
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    out = Path(config.out)
    checkpoints = out / "checkpoints"
    state_file = checkpoints / "last" / "training_state.pt"
    if resume and not state_file.exists():
        raise ConfigError(f"--resume: no checkpoint in {checkpoints}/last; start without --resume")
    if not resume and checkpoints.exists() and any(checkpoints.iterdir()):
        raise ConfigError(
            f"{out} already holds a run; pass --resume to continue it, or choose another --out"
        )
    _seed_everything(tc.seed + dist_info.rank)
    cls = policy_class(config.policy)
    start_from = starting_point(config)
    data = prepare_data(config, config.model, start_from)
    if tc.eval_every > 0 and cls.cannot_act:
        raise ConfigError(f"train.eval_every: a {cls.name} run cannot act: {cls.cannot_act}")
    try:
        with text.from_checkpoint() if start_from else contextlib.nullcontext():
            policy = cls(config.model, data.spec, data.normalizer).to(device)
        if start_from is not None:
            registry.load_weights(policy, start_from.folder)
            policy.on_finetune_start()  # e.g. freeze all but the part it fine-tunes
        elif not resume:
            policy.on_train_start()  # e.g. load pretrained weights; a resumed run has its own
    except CheckpointError as e:
        raise ConfigError(f"init: {e}") from None
    except (ValueError, text.TextModelMissing) as e:
        named = str(e).startswith("model.")  # the message names its key already
        raise ConfigError(str(e) if named else f"model: {e}") from None
    ema = EMA(policy, tc.ema_decay) if tc.ema_decay > 0 else None
    params = [p for p in policy.parameters() if p.requires_grad]
    # The fused kernel updates every tensor in one pass: on a CPU the per-tensor loop of the
    # default implementation cost as much as the MLP's forward and backward passes.
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tc))
    start = 0
    if resume:
        start = _load_training_state(state_file, policy, ema, optimizer, scheduler)
        if start >= tc.steps:
            raise ConfigError(
                f"{out} has already taken {start} steps, train.steps={tc.steps}; to continue "
                f"it give train.steps above {start}"
            )
    model: nn.Module = policy
    if dist_info.world > 1:
        model = nn.parallel.DistributedDataParallel(
            policy, device_ids=[device.index] if device.type == "cuda" else None
        )
    if tc.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    dtype = amp_dtype(tc.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    logger = _Logger(out, enabled=dist_info.main, resume=resume)
    batches = _loader(data, tc, dist_info.rank, start, device)
    if tc.val_at_start and start == 0 and data.val is not None:
        logger.log(0, "val", {"loss": _validate(ema.model if ema else policy, data, tc, device)})
    policy.train()
    last_dir = checkpoints / "last"
    t0 = time.perf_counter()
    for step in range(start, tc.steps):
        batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss, metrics = model(batch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if tc.grad_clip > 0:
            scaler.unscale_(optimizer)
            metrics["grad_norm"] = float(nn.utils.clip_grad_norm_(params, tc.grad_clip))
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if ema is not None:
            ema.update()
        done = step + 1
        if done == start + 1 and dist_info.main:
            _open_run_folder(out, config, logger)
        metrics["lr"] = scheduler.get_last_lr()[0]
        if done % tc.log_every == 0 or done == tc.steps:
            metrics["loss"] = float(loss.detach())
            metrics["steps_per_second"] = (done - start) / (time.perf_counter() - t0)
            logger.log(done, "train", metrics)
        if data.val is not None and (done % tc.val_every == 0 or done == tc.steps):
            logger.log(
                done, "val", {"loss": _validate(ema.model if ema else policy, data, tc, device)}
            )
        if dist_info.main and (done % tc.save_every == 0 or done == tc.steps):
            last_dir = _save(
                checkpoints, done, ema.model if ema else policy, policy, ema, optimizer, scheduler
            )
        if dist_info.main and tc.eval_every > 0 and (done % tc.eval_every == 0):
            export = ema.model if ema else policy
            logger.log(done, "eval", _evaluate_during_training(checkpoints, done, export, tc))
        if on_step is not None:
            on_step(done, metrics)
    logger.close()
    if dist_info.main:
        logger.plot(out / "curves.png")
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.barrier()
    return last_dir


def _open_run_folder(out: Path, config: RunConfig, logger: _Logger) -> None:
    """Create the run folder's files, after the first step. If that fails (a full disk), what
    it created is removed again, and never what was there before."""
    made = [p for p in (out, *out.parents) if not p.exists()]
    files = [out / "config.yaml", out / "metrics.csv", out / "tensorboard"]
    new_files = [p for p in files if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")
        logger.open()
    except BaseException:
        logger.close()
        for path in [made[-1]] if made else new_files:  # the topmost folder made here
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise


def _loader(
    data: TrainingData, tc: TrainConfig, rank: int, start: int, device: torch.device
) -> Iterator:
    dataset = _Batches(data.train, data.train_tasks, tc.batch_size, tc.seed, rank, start)
    if tc.num_workers == 0:
        return iter(dataset)
    data.train.release()  # loaded here to be checked; the workers load their own
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=tc.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=True,
        multiprocessing_context="spawn",
        prefetch_factor=4,
    )
    return iter(loader)


@torch.no_grad()
def _validate(policy: Policy, data: TrainingData, tc: TrainConfig, device: torch.device) -> float:
    assert data.val is not None and data.val_tasks is not None
    was = policy.training
    policy.eval()
    losses = []
    for i in range(tc.val_batches):
        batch = batch_at(data.val, data.val_tasks, tc.batch_size, (tc.seed, 10**6, i))
        loss, _ = policy.loss({k: v.to(device) for k, v in batch.items()})
        losses.append(float(loss))
    policy.train(was)
    return float(np.mean(losses))


def _save(
    checkpoints: Path,
    step: int,
    export: Policy,
    policy: Policy,
    ema: EMA | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> Path:
    """A checkpoint folder, written under a temporary name and renamed, then `last` → it."""
    final = checkpoints / f"step_{step:07d}"
    staging = checkpoints / f".step_{step:07d}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    export.save(staging, extra={"step": step})
    torch.save(
        {
            "step": step,
            "model": policy.state_dict(),
            "ema": None if ema is None else ema.model.state_dict(),
            "ema_updates": 0 if ema is None else ema.updates,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(),
        },
        staging / "training_state.pt",
    )
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    link = checkpoints / "last"
    tmp_link = checkpoints / ".last.tmp"
    if tmp_link.is_symlink() or tmp_link.exists():
        tmp_link.unlink()
    tmp_link.symlink_to(final.name)
    os.replace(tmp_link, link)
    return final


def _load_training_state(
    path: Path, policy: Policy, ema: EMA | None, optimizer: torch.optim.Optimizer, scheduler: Any
) -> int:
    # weights_only: a restricted unpickler that admits tensors and plain containers only.
    state = torch.load(path, map_location="cpu", weights_only=True)
    policy.load_state_dict(state["model"])
    if ema is not None and state["ema"] is not None:
        ema.model.load_state_dict(state["ema"])
        ema.updates = int(state["ema_updates"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    return int(state["step"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def _evaluate_during_training(
    checkpoints: Path, step: int, export: Policy, tc: TrainConfig
) -> dict[str, float]:
    from il.evaluate import evaluate_checkpoint

    folder = checkpoints / f"eval_{step:07d}"
    export.save(folder)
    report = evaluate_checkpoint(
        folder, episodes_per_task=tc.eval_episodes_per_task, workers=tc.eval_workers
    )
    shutil.rmtree(folder, ignore_errors=True)
    return {"success_rate": report.success_rate}


class _Logger:
    """metrics.csv (one row per logged step and phase), TensorBoard events, curves.png."""

    FIELDS = ("step", "phase", "metric", "value")

    def __init__(self, out: Path, enabled: bool, resume: bool) -> None:
        self.enabled = enabled
        self.out = out
        self.resume = resume
        self.rows: list[dict[str, Any]] = []
        self.path = out / "metrics.csv"
        self.writer = None
        self.pending: list[dict[str, Any]] = []
        """Rows logged before `open` (a validation loss at step 0), written when it opens."""
        self.opened = False

    def open(self) -> None:
        """Start the files (the run's first step is done): read a resumed run's rows, or write
        the header, and the rows logged so far."""
        if not self.enabled:
            return
        if self.resume and self.path.exists():
            with open(self.path) as f:
                self.rows = list(csv.DictReader(f))
        else:
            with open(self.path, "w", newline="") as f:
                csv.DictWriter(f, fieldnames=self.FIELDS).writeheader()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.out / "tensorboard"))
        self.opened = True
        pending, self.pending = self.pending, []
        self._write(pending)

    def log(self, step: int, phase: str, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        rows = [{"step": step, "phase": phase, "metric": k, "value": v} for k, v in metrics.items()]
        if self.opened:
            self._write(rows)
        else:
            self.pending += rows

    def _write(self, rows: list[dict[str, Any]]) -> None:
        self.rows += rows
        for row in rows:
            if self.writer is not None:
                self.writer.add_scalar(f"{row['phase']}/{row['metric']}", row["value"], row["step"])
        with open(self.path, "a", newline="") as f:  # append: the file grows, never rewritten
            csv.DictWriter(f, fieldnames=self.FIELDS).writerows(rows)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        series: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for row in self.rows:
            series.setdefault((row["phase"], row["metric"]), []).append(
                (int(row["step"]), float(row["value"]))
            )
        panels = [
            ("loss", [("train", "loss"), ("val", "loss")], True),
            ("learning rate", [("train", "lr")], False),
            ("success in the env", [("eval", "success_rate")], False),
        ]
        panels = [p for p in panels if any(k in series for k in p[1])]
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
        for ax, (title, keys, log) in zip(axes[0], panels, strict=True):
            for key in keys:
                if key in series:
                    steps, values = zip(*series[key], strict=True)
                    ax.plot(steps, values, label=f"{key[0]} {key[1]}")
            ax.set_title(title)
            ax.set_xlabel("step")
            if log:
                ax.set_yscale("log")
            ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
