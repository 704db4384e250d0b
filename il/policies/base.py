"""The one interface every learned policy implements, and its self-describing checkpoint.

Training calls `loss(batch)`; evaluation, deployment and fine-tuning call `reset()` and
`act(observation)`. Everything between a raw observation and the action sent — observation
history, normalization, the queue of a predicted action chunk, temporal ensembling — lives here,
once, so a method only says how it maps normalized observations to a normalized action chunk
(`predict_chunk`) and how it learns (`loss`).

A checkpoint is a folder: `model.safetensors` (weights and normalization buffers) and
`policy.json` (method name, its config, the data spec — observation keys and shapes, action
size and convention, task list, env identity — and the normalization statistics). That is
enough to rebuild the policy and its environment without the training config, and nothing in it
is unpickled. `il.policies.registry.load_policy` rebuilds it: that module knows every method,
this one none.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from il.data.normalize import Normalizer
from robots.action import ActionSpec

__all__ = [
    "CheckpointError",
    "DataSpec",
    "Policy",
    "acting_overrides",
    "build_config",
    "read_description",
    "resolve_checkpoint",
]

CHECKPOINT_FORMAT = "il.policy"
CHECKPOINT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint that cannot be loaded; the message says why and what to do."""


@dataclass
class DataSpec:
    """What a policy sees and emits, in the DemoStore's terms; saved in every checkpoint."""

    obs_shapes: dict[str, list[int]]
    """Store key (`obs/state`, `obs/image/corner`) → shape of one step."""
    action_dim: int
    tasks: list[str] = field(default_factory=list)
    """Task names in the order of the task one-hot; empty for a single-task policy."""
    action: dict[str, Any] = field(default_factory=dict)
    """The action convention copied from the store (the JSON form of `ActionSpec`): checked
    against an env's or a robot's wherever the policy meets one."""
    env: dict[str, Any] = field(default_factory=dict)
    """Env identity from the store (suite, image size, episode length, ...)."""
    instructions: list[str] = field(default_factory=list)
    """The instruction of each task of `tasks` (for text task conditioning)."""
    vocabularies: dict[str, list[str]] = field(default_factory=dict)
    """Per-step label key a method learns from → the phrases its integer values index, from
    the store's attrs `source.<key>_vocabulary` (e.g. `language_motion`: "stop", "move up",
    ...): a checkpoint turns its predicted indices back into words without the store."""

    @property
    def action_spec(self) -> ActionSpec | None:
        """The action convention, typed; None for a checkpoint whose store stated none."""
        return ActionSpec.from_json(self.action)

    @property
    def image_keys(self) -> list[str]:
        return [k for k, s in self.obs_shapes.items() if len(s) == 3]

    @property
    def vector_keys(self) -> list[str]:
        return [k for k, s in self.obs_shapes.items() if len(s) == 1]

    @staticmethod
    def env_key(store_key: str) -> str:
        """The env observation key of a store key: `obs/image/corner` → `image/corner`."""
        return store_key.removeprefix("obs/")


class Policy(nn.Module):
    """Base of every learned policy. Subclasses set `name` and `Config`, build their networks
    in `__init__`, and implement `loss` and `predict_chunk`."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = object
    preset: ClassVar[str] = ""
    """A YAML file beside the method's module that `il train --policy <name>` starts from when
    `configs/<name>.yaml` does not exist (e.g. the maze methods' shared settings)."""
    finetunes: ClassVar[str] = ""
    """The method whose checkpoints this one fine-tunes (`il finetune --method`), where it
    cannot start from scratch: it builds that method's networks and loads its weights."""
    cannot_act: ClassVar[str] = ""
    """Why a checkpoint of this method is not for rolling out, e.g. a pretrained encoder (empty:
    it acts). Evaluation and deployment refuse such a checkpoint in one line before they start."""

    def __init__(self, config: Any, spec: DataSpec, normalizer: Normalizer) -> None:
        super().__init__()
        self.config = config
        self.spec = spec
        self.normalizer = normalizer
        if not 1 <= self.n_action_steps <= self.action_horizon:
            raise ValueError(
                f"n_action_steps must be between 1 and action_horizon ({self.action_horizon})"
            )
        for key, mode in normalizer.modes.items():
            if mode == "identity":
                continue
            scale, offset = normalizer.scale_offset(key)
            self.register_buffer(_buffer(key, "scale"), torch.as_tensor(scale, dtype=torch.float32))
            self.register_buffer(
                _buffer(key, "offset"), torch.as_tensor(offset, dtype=torch.float32)
            )
        self.task: str | None = None
        self._obs_history: collections.deque[dict[str, np.ndarray]] = collections.deque()
        self._queue: collections.deque[np.ndarray] = collections.deque()
        self._ensemble: list[tuple[int, np.ndarray]] = []
        self._t = 0
        self.act_ahead = 0
        """Steps ahead of need that the next chunk's prediction starts, on a background thread
        (0: predict when the queue runs dry). See `set_act_ahead`."""
        self._ahead: concurrent.futures.Future | None = None
        self._ahead_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.generator: torch.Generator | None = None
        """Random numbers of a stochastic policy's `act` (diffusion noise, mixture modes); set
        by `reset(seed=...)` so a seeded episode acts the same whatever else runs beside it."""

    # --- what a method implements ------------------------------------------------------------
    @property
    def obs_horizon(self) -> int:
        return int(getattr(self.config, "obs_horizon", 1))

    @property
    def action_horizon(self) -> int:
        return int(getattr(self.config, "action_horizon", 1))

    @property
    def n_action_steps(self) -> int:
        """Actions of each predicted chunk that are executed before predicting again."""
        return int(getattr(self.config, "n_action_steps", 1))

    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss of a batch of windows (store keys, `<key>_is_pad`, `task`)."""
        raise NotImplementedError

    def on_train_start(self) -> None:
        """Called once by `il.train.train` on a fresh run, after the policy is built and before
        the first step (not on resume: the weights then come from the run's own state). A
        method that starts from other weights (a pretrained encoder) loads them here."""

    def on_finetune_start(self) -> None:
        """Called by `il.train.train` on a fine-tune (`il finetune`), after the starting
        checkpoint's weights are loaded (and on its resume, before the run's own state replaces
        them): a method that trains only part of the policy sets `requires_grad` off on the
        rest here, and only what still requires it is optimised."""

    def forward(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        # `loss` through `__call__`, so DistributedDataParallel and torch.compile see it.
        return self.loss(batch)

    def predict_chunk(self, obs: Mapping[str, torch.Tensor], task: torch.Tensor) -> torch.Tensor:
        """Normalized observations `(b, obs_horizon, ...)` → normalized actions
        `(b, action_horizon, action_dim)`."""
        raise NotImplementedError

    def training_observations(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch's observations normalized, with the config's `obs_noise` (Gaussian, on
        normalized vector observations) added in training mode: noise teaches a policy to come
        back from states slightly off the demonstrations."""
        noise = float(getattr(self.config, "obs_noise", 0.0))
        obs = {}
        for key in self.spec.obs_shapes:
            x = batch[key]
            if x.dtype != torch.uint8:
                x = self.normalize(key, x.float())
                if self.training and noise > 0:
                    x = x + noise * torch.randn_like(x)
            obs[key] = x
        return obs

    # --- normalization -----------------------------------------------------------------------
    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        if self.normalizer.modes.get(key, "identity") == "identity":
            return x
        return (x - getattr(self, _buffer(key, "offset"))) / getattr(self, _buffer(key, "scale"))

    def unnormalize(self, key: str, y: torch.Tensor) -> torch.Tensor:
        if self.normalizer.modes.get(key, "identity") == "identity":
            return y
        return y * getattr(self, _buffer(key, "scale")) + getattr(self, _buffer(key, "offset"))

    def task_index(self, task: str | None) -> int:
        if not self.spec.tasks:
            return 0
        if task not in self.spec.tasks:
            raise ValueError(
                f"this policy was trained on {len(self.spec.tasks)} tasks and {task!r} is not "
                f"one of them: {', '.join(self.spec.tasks)}"
            )
        return self.spec.tasks.index(task)

    # --- control -----------------------------------------------------------------------------
    def reset(self, task: str | None = None, seed: int | None = None) -> None:
        """Forget the observation history and queued actions; set the task if given, and with
        `seed` start the policy's own random numbers anew (else they continue)."""
        if task is not None:
            self.task_index(task)  # fail early on an unknown task
            self.task = task
        if seed is not None:
            device = next(self.parameters()).device
            self.generator = torch.Generator(device=device).manual_seed(int(seed))
        self._obs_history.clear()
        self._queue.clear()
        self._ensemble.clear()
        self._t = 0
        self._ahead = None  # a prediction in flight is for the old episode: its result is dropped

    def set_act_ahead(self, steps: int) -> None:
        """Predict each next chunk `steps` control steps before its first action is needed,
        on a background thread, so `act()` returns a queued action instead of waiting on the
        network (diffusion's denoising takes several control periods on a CPU).

        The chunk is predicted from the observation `steps` steps before it is used, and its
        first `steps` actions (for steps already executed from the previous chunk) are
        skipped, so every action still runs at the time it was predicted for; the cost is that
        the policy reacts `steps` steps later. Needs `steps + n_action_steps <= action_horizon`.
        """
        steps = int(steps)
        if steps < 0 or (
            steps
            and (steps > self.n_action_steps or steps + self.n_action_steps > self.action_horizon)
        ):
            raise ValueError(
                f"act-ahead of {steps} steps needs steps + n_action_steps "
                f"({self.n_action_steps}) <= action_horizon ({self.action_horizon}); use at "
                f"most {min(self.n_action_steps, self.action_horizon - self.n_action_steps)}"
            )
        if steps and getattr(self.config, "temporal_ensemble", None) is not None:
            raise ValueError("act-ahead and temporal ensembling exclude each other")
        self.act_ahead = steps
        self._ahead = None

    @torch.no_grad()
    def act(self, observation: Mapping[str, np.ndarray]) -> np.ndarray:
        """The action to send for a raw env observation (dict of `state`, `image/<camera>`)."""
        step = {}
        for key in self.spec.obs_shapes:
            env_key = DataSpec.env_key(key)
            if env_key not in observation:
                raise ValueError(
                    f"observation lacks {env_key!r} that this policy needs; make the env with "
                    f"obs={tuple(DataSpec.env_key(k) for k in self.spec.obs_shapes)}"
                )
            step[key] = np.asarray(observation[env_key])
        if not self._obs_history:
            self._obs_history.extend([step] * self.obs_horizon)  # pad the start with the first
        else:
            self._obs_history.append(step)
        while len(self._obs_history) > self.obs_horizon:
            self._obs_history.popleft()
        ensemble = getattr(self.config, "temporal_ensemble", None)
        if ensemble is not None:
            action = self._ensembled(self._predict(self._obs_history), float(ensemble))
            self._t += 1
            return action
        if not self._queue:
            if self._ahead is not None:  # predicted `act_ahead` steps ago
                chunk, self._ahead = self._ahead.result(), None
                start = self.act_ahead
            else:
                chunk, start = self._predict(self._obs_history), 0
            self._queue.extend(chunk[start : start + self.n_action_steps])
        self._t += 1
        action = self._queue.popleft()
        if self.act_ahead and len(self._queue) == self.act_ahead - 1 and self._ahead is None:
            # This observation is `act_ahead` steps before the queue runs dry.
            if self._ahead_pool is None:
                self._ahead_pool = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="act-ahead"
                )
            self._ahead = self._ahead_pool.submit(self._predict_quietly, list(self._obs_history))
        return action

    def _predict_quietly(self, history: list[dict[str, np.ndarray]]) -> np.ndarray:
        with torch.no_grad():  # grad mode is per thread
            return self._predict(history)

    def _predict(self, history: collections.deque | list) -> np.ndarray:
        device = next(self.parameters()).device
        obs = {}
        for key in self.spec.obs_shapes:
            x = torch.as_tensor(np.stack([h[key] for h in history]), device=device)[None]
            obs[key] = self.normalize(key, x.float()) if x.dtype != torch.uint8 else x
        task = torch.tensor([self.task_index(self.task)], device=device)
        if self.training:  # switch modes only when needed: `eval()` walks every submodule
            self.eval()
            chunk = self.predict_chunk(obs, task)
            self.train()
        else:
            chunk = self.predict_chunk(obs, task)
        action = self.unnormalize("action", chunk.float())[0]
        return action.cpu().numpy().astype(np.float32)

    def _ensembled(self, chunk: np.ndarray, m: float) -> np.ndarray:
        """ACT's temporal ensembling: every chunk predicted so far that covers this step votes,
        the older with weight exp(-m * age_rank)."""
        self._ensemble.append((self._t, chunk))
        self._ensemble = [(t0, c) for t0, c in self._ensemble if self._t - t0 < len(c)]
        votes = np.stack([c[self._t - t0] for t0, c in self._ensemble])
        weights = np.exp(-m * np.arange(len(votes)))
        return (weights[:, None] * votes).sum(0) / weights.sum()

    # --- checkpoints -------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "policy": self.name,
            "config": dataclasses.asdict(self.config),
            "spec": dataclasses.asdict(self.spec),
            "normalizer": self.normalizer.to_json(),
        }

    def save(self, directory: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
        """Write `model.safetensors` and `policy.json` into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(directory / "model.safetensors"))
        description = self.describe() | dict(extra or {})
        (directory / "policy.json").write_text(json.dumps(description, indent=1))
        return directory


def _buffer(key: str, what: str) -> str:
    return f"norm_{what}__" + key.replace("/", "__")


def read_description(path: str | Path) -> dict[str, Any]:
    """A checkpoint's `policy.json` (method, config, spec, normalizer), checked for format and
    version, without building the policy or reading its weights."""
    directory = resolve_checkpoint(path)
    try:
        description = json.loads((directory / "policy.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"{directory}/policy.json cannot be read ({e}); is it a checkpoint?"
        ) from None
    if description.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{directory} is not an il policy checkpoint (no format in policy.json)"
        )
    if description.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{directory} is checkpoint version {description.get('version')}; this il reads "
            f"version {CHECKPOINT_VERSION}"
        )
    return description


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint folder or a run folder (→ `checkpoints/last`)."""
    path = Path(path)
    if (path / "policy.json").exists():
        return path
    last = path / "checkpoints" / "last"
    if (last / "policy.json").exists():
        return last
    raise CheckpointError(
        f"no checkpoint at {path}: expected policy.json there or in {path}/checkpoints/last; "
        "give a run folder made by `il train` or one of its checkpoints"
    )


def acting_overrides(config_cls: type, items: Sequence[str], method: str) -> dict[str, Any]:
    """`model.key=value` items → typed values for the fields a trained policy may change
    (`config_cls.ACTING`: how many actions of a chunk to execute, denoising steps, ...).

    Anything else shapes the weights or the data the policy was fitted to, so it is refused
    rather than silently producing a policy that was never trained."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    allowed = tuple(getattr(config_cls, "ACTING", ()))
    can = ", ".join(f"model.{k}" for k in allowed) or "nothing"
    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.startswith("model."):
            raise CheckpointError(f"{item!r} is not model.key=value (e.g. model.n_action_steps=4)")
        key = key.removeprefix("model.")
        if key not in allowed:
            raise CheckpointError(
                f"model.{key} cannot change on a trained {method} policy (it shapes the weights "
                f"or is not a field); it can change {can}"
            )
        try:
            typed = OmegaConf.merge(
                OmegaConf.structured(config_cls), OmegaConf.from_dotlist([f"{key}={raw}"])
            )
            values[key] = OmegaConf.to_container(typed)[key]
        except OmegaConfBaseException as e:
            raise CheckpointError(f"bad value for model.{key}: {str(e).splitlines()[0]}") from None
    return values


def build_config(cls: type, values: Mapping[str, Any]) -> Any:
    """A config dataclass from plain values, refusing unknown keys."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise CheckpointError(f"unknown {cls.__name__} field(s) {unknown}; known: {sorted(names)}")
    return cls(**values)
