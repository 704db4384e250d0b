"""The pretraining objectives, as one method of the shared training loop (`encoder-pretraining`),
and the reading of the encoder checkpoint it leaves.

Where it sits: `il pretrain` (pipeline.py) gives `il.train.train` a run of this method. The
`WindowSampler` hands it windows anchored at a step t: the camera's frames t .. t+k, of which the
loss takes the first and the last (`extra_keys` sets the offsets; a window is a range, so a gap
k > 1 gathers the frames between as well), `<camera>_is_pad` (True where a step lies past the
episode's end), and the action at t — the label `action`, or `executed_action` for the dynamics
objectives when the store has it (`config.action_key`). `loss` drops the windows whose future
frame is padded, so no pair of frames ever spans two episodes, and computes the objective on the
raw, un-normalized actions. The run's checkpoint (`<run>/checkpoints/last`) is the encoder
checkpoint: its `policy.json` holds the encoder config, the camera and the pretraining data's
tasks (`spec.env.tasks`), its `model.safetensors` the encoder weights under `encoder.`;
`read_encoder` is how fine-tuning (policy.py, pipeline.py) reads both.

The method cannot act (`cannot_act`): `il eval` and `il deploy` refuse its checkpoint in one line.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import load_file
from torch import nn

from il.config import limits
from il.data.normalize import Normalizer
from il.policies.base import (
    CheckpointError,
    DataSpec,
    Policy,
    read_description,
    resolve_checkpoint,
)
from il.policies.blocks import MLP, ConvKeypointEncoder

__all__ = [
    "DYNAMICS",
    "OBJECTIVES",
    "EncoderConfig",
    "EncoderPretraining",
    "EncoderPretrainingConfig",
    "PretrainError",
    "PretrainedEncoder",
    "check_objective",
    "info_nce",
    "pairs_used",
    "read_encoder",
]

OBJECTIVES = ("id", "bc", "fd-implicit", "contrastive", "fd-explicit")
"""Pretraining objectives, by the labels of the paper's figures."""
DYNAMICS = ("id", "fd-implicit", "fd-explicit")
"""Objectives that explain a transition by its action (they learn from the executed action)."""


class PretrainError(ValueError):
    """Pretraining or fine-tuning that cannot run as asked; the message says what to change."""


@dataclass
class EncoderConfig:
    """The shared image encoder (the paper's: channels 32-64-128-256, strides 2-2-1-1)."""

    features: int = field(default=64, metadata=limits(at_least=1))
    """Output features (after LayerNorm and tanh)."""
    channels: list[int] = field(
        default_factory=lambda: [32, 64, 128, 256], metadata=limits(at_least=1)
    )
    strides: list[int] = field(default_factory=lambda: [2, 2, 1, 1], metadata=limits(at_least=1))
    keypoints: int = field(default=0, metadata=limits(at_least=0))
    """Spatial-softmax keypoints (0: one per channel of the last conv, the paper's)."""
    crop_pad: int = field(default=4, metadata=limits(at_least=0))
    """Random-crop augmentation: shift by up to this many pixels (0: none)."""

    def build(self, crop_pad: int | None = None) -> ConvKeypointEncoder:
        return ConvKeypointEncoder(
            self.features,
            self.channels,
            self.strides,
            self.keypoints or None,
            self.crop_pad if crop_pad is None else crop_pad,
        )


def check_objective(objective: str, frame_gap: int) -> None:
    """A `ValueError` naming the fix where the objective or its frame gap cannot be trained."""
    if objective not in OBJECTIVES:
        raise ValueError(
            f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)} "
            "(scratch, state need no pretraining: use il fewshot)"
        )
    if frame_gap < 1:
        raise ValueError(f"frame_gap must be at least 1, not {frame_gap}")


@dataclass
class EncoderPretrainingConfig:
    """One pretraining objective on one camera; saved in the encoder checkpoint."""

    objective: str = "id"
    """id, bc, fd-implicit, contrastive or fd-explicit."""
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    hidden: list[int] = field(default_factory=lambda: [256, 256], metadata=limits(at_least=1))
    """Widths of the objective's MLP head (ID and BC) or projections (InfoNCE)."""
    dropout: float = field(default=0.1, metadata=limits(at_least=0, below=1))
    temperature: float = field(default=1.0, metadata=limits(above=0))
    """InfoNCE temperature (fd-implicit, contrastive)."""
    frame_gap: int = field(default=1, metadata=limits(at_least=1))
    """k of inverse dynamics: predict a_t from frames t and t+k."""
    camera: str = "obs/image/corner"
    """The store's image key the encoder sees (the run's only observation)."""
    action_key: str = "action"
    """The action a transition is explained by: `action` (the expert's label) or
    `executed_action` (what the env executed, where the store records it)."""

    def check(self) -> None:
        check_objective(self.objective, self.frame_gap)

    def future(self) -> int:
        """Offset of the second frame a sample needs (0: the objective sees one frame)."""
        if self.objective == "id":
            return self.frame_gap
        return 1 if self.objective in DYNAMICS else 0


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


def pairs_used(batch: Mapping[str, torch.Tensor], camera: str) -> torch.Tensor:
    """`b` bool: the windows whose last frame lies inside the anchor's episode (the others
    repeat the episode's last frame and would pair frames that are not k steps apart)."""
    return ~batch[f"{camera}_is_pad"][:, -1]


class EncoderPretraining(Policy):
    """The encoder and the head of one objective; `loss` is that objective on a batch of
    windows. What it leaves is an encoder for `il fewshot`, not a policy."""

    name = "encoder-pretraining"
    Config = EncoderPretrainingConfig
    cannot_act = (
        "it is a pretrained image encoder, not a policy; fine-tune it with "
        "il fewshot --encoder <this run> and evaluate that"
    )

    def __init__(
        self, config: EncoderPretrainingConfig, spec: DataSpec, normalizer: Normalizer
    ) -> None:
        if isinstance(config.encoder, Mapping):  # rebuilt from a checkpoint's JSON
            config = dataclasses.replace(config, encoder=EncoderConfig(**config.encoder))
        config.check()
        super().__init__(config, spec, normalizer)
        if spec.image_keys != [config.camera] or spec.vector_keys:
            raise ValueError(
                f"encoder pretraining sees one camera, {config.camera} (data.obs=[{config.camera}])"
            )
        objective, d = config.objective, config.encoder.features
        hidden, drop, action_dim = config.hidden, config.dropout, spec.action_dim
        # Pixel reconstruction is scored against the unshifted frame: no crop (as the paper).
        self.encoder = config.encoder.build(crop_pad=0 if objective == "fd-explicit" else None)
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
            self.decoder = PixelDecoder(d + action_dim, spec.obs_shapes[config.camera][0])
        self.metric = "info_nce" if objective in ("fd-implicit", "contrastive") else "mse"

    @classmethod
    def extra_keys(cls, config: EncoderPretrainingConfig) -> dict[str, tuple[int, int]]:
        """The camera at t .. t+k (replacing the observation's own offsets; the loss uses the
        first and the last), and the executed action where the objective learns from it."""
        keys = {config.camera: (0, config.future())}
        if config.action_key != "action":
            keys[config.action_key] = (0, 0)
        return keys

    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        config = self.config
        frames = batch[config.camera]  # b l h w c uint8, steps t .. t+k (l = 1 without a future)
        now, later = frames[:, 0], frames[:, -1]
        action = batch[config.action_key][:, 0].float()  # b a, raw
        used = pairs_used(batch, config.camera)
        if not bool(used.all()):
            now, later, action = now[used], later[used], action[used]
        if len(now) == 0:  # every window ran past its episode's end: nothing to learn
            return torch.zeros((), device=now.device, requires_grad=True), {self.metric: 0.0}
        loss = self._objective(now, later, action)
        return loss, {self.metric: float(loss.detach())}

    def _objective(
        self, now: torch.Tensor, later: torch.Tensor, action: torch.Tensor
    ) -> torch.Tensor:
        config = self.config
        objective = config.objective
        if objective == "bc":
            return F.mse_loss(self.head(self.encoder(now)), action)
        if objective == "contrastive":
            two = self.encoder(torch.cat([now, now]))  # independent random crops
            z1, z2 = self.projection(two).chunk(2)
            return 0.5 * (
                info_nce(z1, z2, config.temperature) + info_nce(z2, z1, config.temperature)
            )
        if objective == "fd-explicit":
            decoded = self.decoder(torch.cat([self.encoder(now), action], dim=-1))
            target = rearrange(later, "b h w c -> b c h w").float() / 127.5 - 1.0
            return F.mse_loss(decoded, target)
        both = self.encoder(torch.cat([now, later]))  # one pass: the same encoder, no stop-grad
        z_now, z_later = both.chunk(2)
        if objective == "id":
            return F.mse_loss(self.head(torch.cat([z_now, z_later], dim=-1)), action)
        query = self.query(torch.cat([z_now, self.action_embedding(action)], dim=-1))
        return info_nce(query, self.key(z_later), config.temperature)

    def predict_chunk(self, obs: Mapping[str, torch.Tensor], task: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(f"an {self.name} checkpoint cannot act: {self.cannot_act}")

    def act(self, observation: Mapping[str, np.ndarray]) -> np.ndarray:
        raise RuntimeError(f"an {self.name} checkpoint cannot act: {self.cannot_act}")


# --- the encoder checkpoint ----------------------------------------------------------------------
@dataclass
class PretrainedEncoder:
    """What fine-tuning needs of an encoder checkpoint, read from its `policy.json`."""

    folder: Path
    """The checkpoint folder (`model.safetensors`, `policy.json`)."""
    objective: str
    encoder: EncoderConfig
    camera: str
    image_shape: list[int]
    tasks: list[str]
    """The tasks of the pretraining data: a fine-tuning task must not be one of them."""

    def weights(self) -> dict[str, torch.Tensor]:
        """The encoder's weights (the checkpoint's keys under `encoder.`)."""
        state = load_file(str(self.folder / "model.safetensors"))
        return {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}


def read_encoder(path: str | Path) -> PretrainedEncoder:
    """The encoder checkpoint of an `il pretrain` run (or of one of its checkpoints); anything
    else is a one-line `PretrainError`."""
    path = Path(path)
    try:
        folder = resolve_checkpoint(path)
    except CheckpointError:
        if (path / "encoder.json").exists():
            raise PretrainError(
                f"{path} is an encoder of an earlier il (encoder.json); pretrain it again with "
                "il pretrain"
            ) from None
        raise PretrainError(
            f"no encoder checkpoint at {path} (no policy.json there or in checkpoints/last); "
            "make one with il pretrain, or use encoder=scratch or encoder=state"
        ) from None
    try:
        description: dict[str, Any] = read_description(folder)
    except CheckpointError as e:
        raise PretrainError(str(e)) from None
    if description.get("policy") != EncoderPretraining.name:
        raise PretrainError(
            f"{folder} is a {description.get('policy')} checkpoint, not an encoder of il "
            "pretrain; give an il pretrain run, or encoder=scratch or encoder=state"
        )
    config, spec = description["config"], description["spec"]
    return PretrainedEncoder(
        folder=folder,
        objective=str(config["objective"]),
        encoder=EncoderConfig(**config["encoder"]),
        camera=str(config["camera"]),
        image_shape=list(spec["obs_shapes"][config["camera"]]),
        tasks=[str(t) for t in spec["env"].get("tasks", [])],
    )
