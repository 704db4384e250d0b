"""Inverse-dynamics pretraining (Brandfonbrener, Nachum & Bruna, NeurIPS 2023): learn an image
encoder on multitask demonstrations, freeze it, and imitate a new task from a few demos.

Data flow: a pretraining DemoStore (many tasks, one camera) → `pretrain` fits the shared
`ConvKeypointEncoder` with one of five objectives and writes an encoder checkpoint → `fewshot`
loads it frozen, encodes the few demonstrations of a held-out task once, fits a small MLP head,
and saves an ordinary policy checkpoint (`PretrainedBCPolicy`, encoder weights included) that
`il eval` and `il deploy` take like any other.

The objectives, by the labels of the paper's figures:

- `id`: inverse dynamics, â_t = MLP([φ(o_t), φ(o_{t+k})]). What changes between two frames is
  caused by the action, and only the agent's own state and what it touches change, so the
  features must locate the arm and the objects — what a policy needs — and ignore the rest.
- `bc`: multitask BC, â_t = MLP(φ(o_t)) without the task: the action also depends on the
  hidden task, so the features are pushed to guess it, which does not carry to a new task.
- `fd-implicit`: InfoNCE between a projection of [φ(o_t), action embedding] and one of
  φ(o_{t+1}) (other samples of the batch are the negatives); temperature 1.
- `contrastive`: SimCLR-style InfoNCE between two random crops of the same frame; no actions.
- `fd-explicit`: a decoder reconstructs the pixels of o_{t+1} from φ(o_t) and a_t; no crop.

The transition o_t → o_{t+k} is explained by the action the env *executed*; a store recorded
with `il record --action-noise` keeps that as `executed_action` (the label `action` is the
expert's), and the dynamics objectives use it whenever it is there. BC uses the label.

The references `scratch` (the same encoder and head trained end to end on the few demos, with
random crops) and `state` (the head on the true 39-d state) go through `fewshot` as well.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from omegaconf import DictConfig
from safetensors.torch import load_file, save_file
from torch import nn

from il.config import load_structured
from il.data.normalize import Normalizer
from il.data.store import DemoStore, StoreError
from il.policies.base import DataSpec, Policy
from il.policies.blocks import MLP, ConvKeypointEncoder

__all__ = [
    "OBJECTIVES",
    "REFERENCES",
    "EncoderConfig",
    "FewShotConfig",
    "PretrainConfig",
    "PretrainError",
    "PretrainedBCConfig",
    "PretrainedBCPolicy",
    "Pretrainer",
    "fewshot",
    "load_encoder",
    "load_options",
    "pretrain",
]

OBJECTIVES = ("id", "bc", "fd-implicit", "contrastive", "fd-explicit")
"""Pretraining objectives, by the labels of the paper's figures."""
REFERENCES = ("scratch", "state")
"""Fine-tuning references that use no pretrained encoder."""
ENCODER_FORMAT = "il.encoder"
ENCODER_VERSION = 1


class PretrainError(Exception):
    """Pretraining or fine-tuning that cannot run as asked; the message says what to change."""


# --- configs -------------------------------------------------------------------------------------
@dataclass
class EncoderConfig:
    """The shared image encoder (the paper's: channels 32-64-128-256, strides 2-2-1-1)."""

    features: int = 64
    """Output features (after LayerNorm and tanh)."""
    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    strides: list[int] = field(default_factory=lambda: [2, 2, 1, 1])
    keypoints: int = 0
    """Spatial-softmax keypoints (0: one per channel of the last conv, the paper's)."""
    crop_pad: int = 4
    """Random-crop augmentation: shift by up to this many pixels (0: none)."""

    def build(self, crop_pad: int | None = None) -> ConvKeypointEncoder:
        return ConvKeypointEncoder(
            self.features,
            self.channels,
            self.strides,
            self.keypoints or None,
            self.crop_pad if crop_pad is None else crop_pad,
        )


@dataclass
class PretrainConfig:
    """`il pretrain`: one objective on a multitask store. Every field can be set as `key=value`."""

    objective: str = "id"
    """id, bc, fd-implicit, contrastive or fd-explicit."""
    data: str = "data/door-pretrain.zarr"
    out: str = "runs/enc-id"
    camera: str = "obs/image/corner"
    """The store's image key the encoder sees."""
    tasks: list[str] | None = None
    """Only episodes of these tasks (default: all)."""
    held_out: list[str] = field(default_factory=list)
    """Tasks that must not appear in the pretraining data (the fine-tuning tasks): pretraining
    refuses to start if any of them is selected."""
    frame_gap: int = 1
    """k of inverse dynamics: predict a_t from frames t and t+k."""
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    """Widths of the objective's MLP head (ID and BC) or projections (InfoNCE)."""
    dropout: float = 0.1
    temperature: float = 1.0
    """InfoNCE temperature (fd-implicit, contrastive)."""
    steps: int = 100_000
    batch_size: int = 256
    lr: float = 1e-3
    val_fraction: float = 0.1
    """Episodes held out to measure the objective's loss on frames it never trained on."""
    val_every: int = 0
    """Steps between validation losses (0: at the start and the end only)."""
    seed: int = 0
    threads: int = 0
    """torch CPU threads (0: torch's default)."""
    device: str = "cpu"

    def check(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)} "
                f"({', '.join(REFERENCES)} need no pretraining: use il fewshot)"
            )
        if self.frame_gap < 1:
            raise ValueError(f"frame_gap must be at least 1, not {self.frame_gap}")
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError("steps must be at least 1 and batch_size at least 2")


@dataclass
class FewShotConfig:
    """`il fewshot`: a BC head on a few demos of a held-out task, over a frozen encoder."""

    encoder: str = "runs/enc-id"
    """An encoder checkpoint of `il pretrain`, or `scratch` (train the encoder end to end on
    the demos), or `state` (no images: the true state)."""
    data: str = "data/door-lock.zarr"
    out: str = "runs/ft-door-lock"
    demos: int = 10
    """Demonstrations used (drawn by `seed` from the store's successful episodes)."""
    task: str | None = None
    """The task to imitate (default: the store's only task)."""
    camera: str = ""
    """Image key for `scratch` (default: the encoder's camera, else obs/image/corner)."""
    steps: int = 10_000
    """Head steps; `scratch` trains the whole encoder for `scratch_steps` instead."""
    scratch_steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    dropout: float = 0.1
    scratch_encoder: EncoderConfig = field(default_factory=EncoderConfig)
    """The encoder `scratch` trains (the pretrained runs take theirs from the checkpoint)."""
    seed: int = 0
    threads: int = 0
    device: str = "cpu"


def load_options(
    cls: type, yaml_path: str | Path | DictConfig | None, overrides: Sequence[str]
) -> Any:
    """`cls` defaults, then the YAML, then `key=value` overrides; an unknown key or a bad value
    is a one-line `PretrainError` naming it."""
    return load_structured(cls, yaml_path, overrides, PretrainError, example="steps=5000")


# --- data ----------------------------------------------------------------------------------------
@dataclass
class Frames:
    """Selected episodes of a store, in memory: images `n h w c` uint8, actions, episode bounds.

    A CPU-sized corpus (≈15k frames at 64 px: 180 MB) fits in memory, and sampling pairs
    (t, t+k) from RAM is far cheaper than decoding image chunks every step."""

    images: torch.Tensor
    actions: torch.Tensor
    """The expert's label `action`."""
    executed: torch.Tensor
    """The action the env executed (`executed_action` if the store has it, else `action`)."""
    starts: np.ndarray
    ends: np.ndarray
    tasks: list[str]

    def anchors(self, gap: int) -> np.ndarray:
        """Steps t whose frame t+gap lies in the same episode."""
        ranges = [np.arange(s, e - gap) for s, e in zip(self.starts, self.ends, strict=True)]
        return np.concatenate(ranges or [np.zeros(0, np.int64)]).astype(np.int64)


def _open(path: str) -> DemoStore:
    try:
        return DemoStore.open(path)
    except StoreError as e:
        raise PretrainError(str(e)) from None


def _load_frames(store: DemoStore, camera: str, episodes: np.ndarray) -> Frames:
    if camera not in store.schema.keys:
        images = [k for k in store.schema.keys if k.startswith("obs/image/")]
        raise PretrainError(
            f"{store.path} has no {camera!r}; its cameras: {', '.join(images) or 'none'} "
            "(record with --obs state,image/<camera>)"
        )
    parts: dict[str, list[np.ndarray]] = {"img": [], "act": [], "exe": []}
    starts, ends, at = [], [], 0
    has_executed = "executed_action" in store.schema.keys
    for e in episodes:
        keys = [camera, "action", *(["executed_action"] if has_executed else [])]
        steps = store.read_episode(int(e), keys)
        parts["img"].append(steps[camera])
        parts["act"].append(steps["action"])
        parts["exe"].append(steps["executed_action" if has_executed else "action"])
        starts.append(at)
        at += len(steps["action"])
        ends.append(at)
    meta = store.episode_meta()
    return Frames(
        torch.from_numpy(np.concatenate(parts["img"])),
        torch.from_numpy(np.concatenate(parts["act"]).astype(np.float32)),
        torch.from_numpy(np.concatenate(parts["exe"]).astype(np.float32)),
        np.asarray(starts),
        np.asarray(ends),
        sorted({str(meta["task"][e]) for e in episodes}),
    )


def _episodes(
    store: DemoStore, tasks: Sequence[str] | None, only_success: bool = True
) -> np.ndarray:
    meta = store.episode_meta()
    task_of = np.array([str(t) for t in meta["task"]])
    keep = np.asarray(meta["success"], dtype=bool) | (not only_success)
    if tasks is not None:
        unknown = sorted(set(tasks) - set(task_of))
        if unknown:
            raise PretrainError(
                f"no episodes of {', '.join(unknown)} in {store.path}; "
                f"it holds {', '.join(sorted(set(task_of)))}"
            )
        keep &= np.isin(task_of, list(tasks))
    episodes = np.flatnonzero(keep)
    if len(episodes) == 0:
        which = "successful episodes" if only_success else "episodes"
        raise PretrainError(f"no {which} in {store.path} to learn from")
    return episodes


# --- the objectives ------------------------------------------------------------------------------
def info_nce(queries: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of matching each query with its own key among the batch's keys."""
    logits = queries @ keys.T / temperature  # b b
    return F.cross_entropy(logits, torch.arange(len(queries), device=queries.device))


class PixelDecoder(nn.Module):
    """Features → an image (`b c h w` in [-1, 1]): a linear map to an 8×8 grid, then transposed
    convolutions doubling the side until it reaches the image size.

    The channels halve at every doubling (64 → 32 → 16 at 64 px), as in the usual
    convolutional decoders: at full width the last two layers cost 90% of a step, which made
    this objective eight times slower than the others on a CPU."""

    def __init__(self, in_dim: int, image_size: int, width: int = 64, min_width: int = 16) -> None:
        super().__init__()
        doublings = max(0, round(math.log2(image_size / 8)))
        self.side, self.width, self.image_size = image_size // 2**doublings, width, image_size
        self.fc = nn.Linear(in_dim, width * self.side * self.side)
        layers: list[nn.Module] = []
        channels = width
        for _ in range(doublings):
            out = max(min_width, channels // 2)
            layers += [nn.ConvTranspose2d(channels, out, 4, 2, 1), nn.GELU()]
            channels = out
        layers.append(nn.Conv2d(channels, 3, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = rearrange(self.fc(z), "b (c h w) -> b c h w", c=self.width, h=self.side)
        return torch.tanh(self.net(F.gelu(x)))


class Pretrainer(nn.Module):
    """The encoder and the head of one objective; `loss(frames, indices)` is that objective's
    loss on the samples anchored at `indices` (global steps of `frames`)."""

    def __init__(self, config: PretrainConfig, image_size: int, action_dim: int) -> None:
        super().__init__()
        self.config = config
        objective = config.objective
        # Pixel reconstruction is scored against the unshifted frame: no crop (as the paper).
        self.encoder = config.encoder.build(crop_pad=0 if objective == "fd-explicit" else None)
        d, hidden, drop = config.encoder.features, config.hidden, config.dropout
        self.gap = config.frame_gap if objective == "id" else 1
        if objective == "id":
            self.head = MLP(2 * d, hidden, action_dim, dropout=drop)
        elif objective == "bc":
            self.head = MLP(d, hidden, action_dim, dropout=drop)
        elif objective == "fd-implicit":
            self.action_embedding = MLP(action_dim, [hidden[0]], d)
            self.query = MLP(2 * d, hidden, d)
            self.key = MLP(d, hidden, d)
        elif objective == "contrastive":
            self.projection = MLP(d, hidden, d)
        else:  # fd-explicit
            self.decoder = PixelDecoder(d + action_dim, image_size)

    def loss(self, frames: Frames, t: torch.Tensor) -> torch.Tensor:
        images, objective = frames.images, self.config.objective
        now = images[t]
        if objective == "bc":
            return F.mse_loss(self.head(self.encoder(now)), frames.actions[t])
        if objective == "contrastive":
            two = self.encoder(torch.cat([now, now]))  # independent random crops
            z1, z2 = self.projection(two).chunk(2)
            return 0.5 * (
                info_nce(z1, z2, self.config.temperature)
                + info_nce(z2, z1, self.config.temperature)
            )
        action = frames.executed[t]
        later = images[t + self.gap]
        if objective == "fd-explicit":
            decoded = self.decoder(torch.cat([self.encoder(now), action], dim=-1))
            target = rearrange(later, "b h w c -> b c h w").float() / 127.5 - 1.0
            return F.mse_loss(decoded, target)
        both = self.encoder(torch.cat([now, later]))  # one pass: the same encoder, no stop-grad
        z_now, z_later = both.chunk(2)
        if objective == "id":
            return F.mse_loss(self.head(torch.cat([z_now, z_later], dim=-1)), action)
        query = self.query(torch.cat([z_now, self.action_embedding(action)], dim=-1))
        return info_nce(query, self.key(z_later), self.config.temperature)


def _batch_indices(anchors: np.ndarray, batch: int, rng: np.random.Generator) -> torch.Tensor:
    return torch.from_numpy(anchors[rng.integers(0, len(anchors), size=batch)])


@torch.no_grad()
def _held_out_loss(model: Pretrainer, frames: Frames, batch: int, seed: int) -> float:
    """The objective's loss on held-out frames, over fixed batches (the same at every call)."""
    anchors = frames.anchors(model.gap)
    if len(anchors) == 0:
        return float("nan")
    was = model.training
    model.eval()
    rng = np.random.default_rng([seed, 99])
    order = rng.permutation(anchors)[: max(batch, min(len(anchors), 4 * batch))]
    losses = [
        float(model.loss(frames, torch.from_numpy(order[i : i + batch])))
        for i in range(0, len(order), batch)
        if len(order[i : i + batch]) >= 2
    ]
    model.train(was)
    return float(np.mean(losses)) if losses else float("nan")


def _split(episodes: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if fraction <= 0 or len(episodes) < 2:
        return episodes, episodes[:0]
    n_val = min(max(1, round(fraction * len(episodes))), len(episodes) - 1)
    order = np.random.default_rng(seed).permutation(episodes)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def pretrain(
    config: PretrainConfig, on_step: Callable[[int, dict[str, float]], None] | None = None
) -> Path:
    """Fit the encoder with `config.objective`; returns the encoder checkpoint folder.

    The checkpoint (`encoder.safetensors` + `encoder.json`) records the tasks it saw, so a
    fine-tuning run can refuse a task that was part of its pretraining data.
    """
    config.check()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    store = _open(config.data)
    # Failed episodes are still transitions: every objective but BC learns from them as well.
    episodes = _episodes(store, config.tasks, only_success=config.objective == "bc")
    meta_task = np.array([str(t) for t in store.episode_meta()["task"]])
    leaked = sorted(set(meta_task[episodes]) & set(config.held_out))
    if leaked:
        raise PretrainError(
            f"held-out task {', '.join(leaked)} is in the pretraining data {config.data}; "
            "pretrain on a store (or data tasks=[...]) without it"
        )
    train_eps, val_eps = _split(episodes, config.val_fraction, config.seed)
    frames = _load_frames(store, config.camera, train_eps)
    held_out = _load_frames(store, config.camera, val_eps) if len(val_eps) else None
    shape = tuple(frames.images.shape[1:])
    device = torch.device(config.device)
    model = Pretrainer(config, shape[0], frames.actions.shape[1]).to(device)
    frames = _to(frames, device)
    held_out = None if held_out is None else _to(held_out, device)
    anchors = frames.anchors(model.gap)
    if len(anchors) == 0:
        raise PretrainError(f"no episode of {config.data} is longer than frame_gap")
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    rng = np.random.default_rng(config.seed)
    history: list[dict[str, float]] = []

    def validate(step: int) -> float:
        if held_out is None:
            return float("nan")
        value = _held_out_loss(model, held_out, config.batch_size, config.seed)
        history.append({"step": step, "val_loss": value})
        return value

    first_val = validate(0)
    model.train()
    t0 = time.perf_counter()
    loss_value = float("nan")
    for step in range(1, config.steps + 1):
        loss = model.loss(frames, _batch_indices(anchors, config.batch_size, rng).to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
        metrics = {"loss": loss_value}
        if config.val_every and step % config.val_every == 0 and step < config.steps:
            metrics["val_loss"] = validate(step)
        if on_step is not None:
            on_step(step, metrics)
    last_val = validate(config.steps)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in model.encoder.state_dict().items()},
        str(out / "encoder.safetensors"),
    )
    description = {
        "format": ENCODER_FORMAT,
        "version": ENCODER_VERSION,
        "objective": config.objective,
        "encoder": dataclasses.asdict(config.encoder),
        "camera": config.camera,
        "image_shape": list(shape),
        "pretraining_tasks": sorted(set(meta_task[episodes])),
        "data": config.data,
        "frames": len(frames.images),
        "episodes": len(train_eps),
        "config": dataclasses.asdict(config),
        "metrics": {
            "train_loss": loss_value,
            "val_loss_start": first_val,
            "val_loss_end": last_val,
            "seconds": time.perf_counter() - t0,
            "history": history,
        },
    }
    (out / "encoder.json").write_text(json.dumps(description, indent=1))
    return out


def _to(frames: Frames, device: torch.device) -> Frames:
    return dataclasses.replace(
        frames,
        images=frames.images.to(device),
        actions=frames.actions.to(device),
        executed=frames.executed.to(device),
    )


def load_encoder(path: str | Path) -> tuple[ConvKeypointEncoder, dict[str, Any]]:
    """An encoder checkpoint of `pretrain`: the module (eval mode) and its description."""
    folder = Path(path)
    try:
        description = json.loads((folder / "encoder.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise PretrainError(
            f"no encoder checkpoint at {folder} (no readable encoder.json); make one with "
            "il pretrain, or use encoder=scratch or encoder=state"
        ) from None
    if description.get("format") != ENCODER_FORMAT:
        raise PretrainError(f"{folder}/encoder.json is not an il encoder checkpoint")
    encoder = EncoderConfig(**description["encoder"]).build()
    encoder.load_state_dict(load_file(str(folder / "encoder.safetensors")))
    return encoder.eval(), description


# --- the fine-tuned policy -----------------------------------------------------------------------
@dataclass
class PretrainedBCConfig:
    """A BC head on one camera's features (or on the state); saved in its checkpoint."""

    encoder: EncoderConfig | None = None
    """The image encoder; None: the policy sees the state vector only."""
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    dropout: float = 0.1
    objective: str = ""
    """How the encoder was obtained (id, bc, ..., scratch, state): provenance only."""
    pretraining_tasks: list[str] = field(default_factory=list)
    """Tasks of the encoder's pretraining data: provenance, and the held-out check."""


class PretrainedBCPolicy(Policy):
    """MLP(φ(image)) → action, with φ pretrained and frozen, or trained from scratch; or
    MLP(state) for the `state` reference."""

    name = "pretrained-bc"
    Config = PretrainedBCConfig

    def __init__(self, config: PretrainedBCConfig, spec: DataSpec, normalizer: Normalizer) -> None:
        if isinstance(config.encoder, Mapping):  # rebuilt from a checkpoint's JSON
            config = dataclasses.replace(config, encoder=EncoderConfig(**config.encoder))
        super().__init__(config, spec, normalizer)
        if config.encoder is not None:
            if len(spec.image_keys) != 1 or spec.vector_keys:
                raise ValueError("a pretrained-bc policy with an encoder sees one camera only")
            self.key = spec.image_keys[0]
            self.encoder: ConvKeypointEncoder | None = config.encoder.build()
            in_dim = config.encoder.features
        else:
            if spec.image_keys or len(spec.vector_keys) != 1:
                raise ValueError("a pretrained-bc policy without an encoder sees one vector key")
            self.key = spec.vector_keys[0]
            self.encoder = None
            in_dim = spec.obs_shapes[self.key][0]
        self.head = MLP(in_dim, config.hidden, spec.action_dim, dropout=config.dropout)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Current observations (`b ...`, normalized if a vector) → the head's input."""
        return x.float() if self.encoder is None else self.encoder(x)

    def predict_chunk(self, obs: Mapping[str, torch.Tensor], task: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(obs[self.key][:, -1]))[:, None]

    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        obs = self.training_observations(batch)
        prediction = self.predict_chunk(obs, batch.get("task", torch.zeros(1)))[:, 0]
        target = self.normalize("action", batch["action"][:, 0].float())
        loss = F.mse_loss(prediction, target)
        return loss, {"mse": float(loss.detach())}


def fewshot(
    config: FewShotConfig, on_step: Callable[[int, dict[str, float]], None] | None = None
) -> Path:
    """Fit a `PretrainedBCPolicy` on `config.demos` demonstrations; returns its checkpoint.

    With a pretrained encoder the encoder is frozen and every frame is encoded once, so the
    head trains at the cost of an MLP; `scratch` trains encoder and head together with random
    crops; `state` fits the head on the normalized state.
    """
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    store = _open(config.data)
    meta = store.episode_meta()
    task_of = np.array([str(t) for t in meta["task"]])
    task = config.task
    if task is None:
        present = sorted(set(task_of))
        if len(present) != 1:
            raise PretrainError(
                f"{config.data} holds {len(present)} tasks ({', '.join(present)}); "
                "choose one with task=<name>"
            )
        task = present[0]
    pretrained: ConvKeypointEncoder | None = None
    description: dict[str, Any] = {}
    if config.encoder not in REFERENCES:
        pretrained, description = load_encoder(config.encoder)
        if task in description["pretraining_tasks"]:
            raise PretrainError(
                f"fine-tune task {task} is in the pretraining data of {config.encoder}; "
                "few-shot transfer needs a task the encoder never saw"
            )
    episodes = _episodes(store, [task])
    if len(episodes) < config.demos:
        raise PretrainError(
            f"{config.data} has {len(episodes)} successful episodes of {task}, fewer than "
            f"demos={config.demos}; record more"
        )
    chosen = np.sort(np.random.default_rng(config.seed).permutation(episodes)[: config.demos])
    camera = description.get("camera") or config.camera or "obs/image/corner"
    key = "obs/state" if config.encoder == "state" else camera
    if key not in store.schema.keys:
        raise PretrainError(f"{config.data} has no {key!r}; record it with --obs")
    if pretrained is not None:
        stored = list(store.schema.keys[key].shape)
        if stored != description["image_shape"]:
            raise PretrainError(
                f"{config.data} has {key} images of {stored}; the encoder was pretrained on "
                f"{description['image_shape']}: record at the same --image-size"
            )
    modes = {"action": "min_max", key: "mean_std" if key == "obs/state" else "identity"}
    normalizer = Normalizer.from_store(store, modes, chosen)
    source = store.schema.source
    spec = DataSpec(
        obs_shapes={key: list(store.schema.keys[key].shape)},
        action_dim=int(store.schema.keys["action"].shape[0]),
        action=dict(store.schema.action),
        env={
            k: source[k]
            for k in ("env", "suite", "split", "image_size", "max_episode_steps")
            if k in source
        }
        | {"tasks": [task]},
    )
    if config.encoder == "state":
        encoder_config, objective = None, "state"
    elif config.encoder == "scratch":
        encoder_config, objective = config.scratch_encoder, "scratch"
    else:
        encoder_config, objective = (
            EncoderConfig(**description["encoder"]),
            description["objective"],
        )
    policy_config = PretrainedBCConfig(
        encoder=encoder_config,
        hidden=list(config.hidden),
        dropout=config.dropout,
        objective=objective,
        pretraining_tasks=list(description.get("pretraining_tasks", [])),
    )
    policy = PretrainedBCPolicy(policy_config, spec, normalizer)
    if pretrained is not None:
        assert policy.encoder is not None
        policy.encoder.load_state_dict(pretrained.state_dict())
        policy.encoder.requires_grad_(False)
    policy.to(device)
    steps_data = [store.read_episode(int(e), [key, "action"]) for e in chosen]
    obs = torch.from_numpy(np.concatenate([s[key] for s in steps_data])).to(device)
    target = policy.normalize(
        "action", torch.from_numpy(np.concatenate([s["action"] for s in steps_data])).to(device)
    )
    if key == "obs/state":
        obs = policy.normalize(key, obs.float())
    trainable = config.encoder == "scratch"
    if pretrained is not None:
        obs = _encode(policy, obs, config.batch_size)  # once: the encoder is frozen
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr)
    steps = config.scratch_steps if trainable else config.steps
    rng = np.random.default_rng(config.seed)
    policy.train()
    if pretrained is not None:
        policy.encoder.eval()  # frozen features: no random crop
    t0 = time.perf_counter()
    loss_value = float("nan")
    for step in range(1, steps + 1):
        idx = torch.from_numpy(rng.integers(0, len(obs), size=config.batch_size)).to(device)
        x = obs[idx]
        features = x if pretrained is not None else policy.features(x)
        loss = F.mse_loss(policy.head(features), target[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
        if on_step is not None:
            on_step(step, {"loss": loss_value})
    policy.requires_grad_(True)
    out = policy.eval().save(
        config.out,
        extra={
            "step": steps,
            "fewshot": {
                "demos": int(config.demos),
                "episodes": [int(e) for e in chosen],
                "frames": len(obs),
                "task": task,
                "encoder": config.encoder,
                "train_loss": loss_value,
                "seconds": time.perf_counter() - t0,
            },
        },
    )
    return out


@torch.no_grad()
def _encode(policy: PretrainedBCPolicy, images: torch.Tensor, batch: int) -> torch.Tensor:
    assert policy.encoder is not None
    policy.encoder.eval()
    return torch.cat([policy.encoder(images[i : i + batch]) for i in range(0, len(images), batch)])
