"""Behaviour cloning: regress the expert's actions from observations.

The simplest method and the baseline every other one must beat. An observation encoder (state
MLP input, a spatial-softmax CNN per camera, a task one-hot) feeds an MLP that predicts a chunk
of `action_horizon` future actions at once; `n_action_steps` of them are executed before the
next prediction, or, with `temporal_ensemble`, every step predicts and overlapping chunks vote
(ACT, Zhao et al. 2023). The loss is the mean squared error on normalized actions, over the
steps that are not padding (an episode's end).

With `head: gmm` the MLP predicts a mixture of Gaussians over the chunk instead (robomimic's
BC-GMM) and learns by likelihood. Where the expert's action jumps between branches of its
state machine on nearly the same state, a regressor averages the branches into an action no
demonstration took (often a standstill); a mixture keeps each branch as a mode, and acting picks
one mode by its weight and executes that mode's mean.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange

from il.config import limits
from il.data.normalize import Normalizer
from il.policies.base import DataSpec, Policy
from il.policies.blocks import MLP, ObservationConfig, ObservationEncoder

__all__ = ["BCConfig", "BCPolicy", "chunk_mse"]


@dataclass
class BCConfig(ObservationConfig):
    """Behaviour cloning."""

    ACTING: ClassVar[tuple[str, ...]] = ("n_action_steps", "temporal_ensemble", "gmm_act")
    """Fields that change how the trained policy acts, not its weights: `il eval` and
    `il deploy` may set them on a checkpoint."""

    action_horizon: int = field(default=1, metadata=limits(at_least=1))
    """Future actions predicted at once (the action chunk)."""
    n_action_steps: int = 1
    """Actions of each chunk executed before predicting again (≤ action_horizon)."""
    temporal_ensemble: float | None = None
    """If set, predict every step and average overlapping chunks with weights exp(-m·age)."""
    hidden: list[int] = field(default_factory=lambda: [512, 512, 512], metadata=limits(at_least=1))
    """Widths of the MLP head's hidden layers."""
    dropout: float = field(default=0.0, metadata=limits(at_least=0, below=1))
    layer_norm: bool = False
    head: str = "mse"
    """`mse`: regress the mean action; `gmm`: a Gaussian mixture over the chunk, by likelihood."""
    gmm_modes: int = field(default=5, metadata=limits(at_least=1))
    """Mixture components of the `gmm` head."""
    gmm_min_std: float = field(default=0.01, metadata=limits(above=0))
    """Floor of each component's standard deviation (normalized units): keeps likelihood finite."""
    gmm_act: str = "sample"
    """How the `gmm` head acts: `sample` draws a mode by its weight (alternates between branches
    as the expert does), `best` takes the most likely mode (never executes a mode the mixture
    gives little weight)."""


def chunk_mse(
    prediction: torch.Tensor,
    target: torch.Tensor,
    is_pad: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean squared error of predicted action chunks `(b, horizon, action_dim)` over the steps
    that are not padding past an episode's end (`is_pad`, `b horizon`), and its metrics.
    `weights` (b): a weighted mean of each sample's error instead (they need not sum to 1)."""
    valid = (~is_pad).unsqueeze(-1).to(prediction.dtype)  # b h 1
    error = (prediction - target) ** 2 * valid
    if weights is None:
        loss = error.sum() / (valid.sum() * target.shape[-1]).clamp(min=1)
    else:
        per_sample = error.sum((1, 2)) / (valid.sum((1, 2)) * target.shape[-1]).clamp(min=1)
        loss = (weights * per_sample).sum() / weights.sum().clamp(min=1e-12)
    first = ((prediction[:, 0] - target[:, 0]) ** 2).mean()
    return loss, {"mse": float(loss.detach()), "mse_first_action": float(first.detach())}


class BCPolicy(Policy):
    name = "bc"
    Config = BCConfig

    def __init__(self, config: BCConfig, spec: DataSpec, normalizer: Normalizer) -> None:
        super().__init__(config, spec, normalizer)
        if config.head not in ("mse", "gmm"):
            raise ValueError(f"model.head must be 'mse' or 'gmm', not {config.head!r}")
        if config.gmm_act not in ("sample", "best"):
            raise ValueError(f"model.gmm_act must be 'sample' or 'best', not {config.gmm_act!r}")
        self.chunk_dim = config.action_horizon * spec.action_dim
        modes = config.gmm_modes if config.head == "gmm" else 0
        # gmm: per mode a mean and a log-std per chunk value, and one logit
        out_dim = self.chunk_dim if not modes else modes * (2 * self.chunk_dim + 1)
        self.encoder = ObservationEncoder.from_config(
            config, spec.obs_shapes, spec.tasks, spec.instructions
        )
        self.head = MLP(
            self.encoder.out_dim,
            config.hidden,
            out_dim,
            dropout=config.dropout,
            layer_norm=config.layer_norm,
        )

    def _head_output(self, obs: Mapping[str, torch.Tensor], task: torch.Tensor) -> torch.Tensor:
        """The head's raw output, computed in float32 even under bf16 autocast: bf16 keeps 8
        bits of mantissa, a step of 0.008 near ±1 of the normalized action range, too coarse
        for the actions of a precise approach. The head is a small share of the time; the
        encoder's convolutions, where it goes, keep autocast."""
        features = self.encoder(obs, task)
        with torch.autocast(features.device.type, enabled=False):
            return self.head(features.float())

    def mixture(
        self, obs: Mapping[str, torch.Tensor], task: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The `gmm` head's mixture: logits (b m), means and stds (b m chunk_dim)."""
        out = self._head_output(obs, task)
        m, d = self.config.gmm_modes, self.chunk_dim
        logits, means, raw_std = out.split([m, m * d, m * d], dim=-1)
        means = rearrange(means, "b (m d) -> b m d", m=m)
        std = F.softplus(rearrange(raw_std, "b (m d) -> b m d", m=m)) + self.config.gmm_min_std
        return logits, means, std

    def predict_chunk(self, obs: Mapping[str, torch.Tensor], task: torch.Tensor) -> torch.Tensor:
        if self.config.head == "gmm":
            logits, means, _ = self.mixture(obs, task)
            if self.config.gmm_act == "best":
                mode = logits.argmax(-1)
            else:
                probs = logits.float().softmax(-1)
                mode = torch.multinomial(probs, 1, generator=self.generator)[:, 0]  # b
            out = means[torch.arange(len(mode), device=mode.device), mode]
        else:
            out = self._head_output(obs, task)
        return rearrange(out, "b (h a) -> b h a", h=self.config.action_horizon)

    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        obs = self.training_observations(batch)
        target = self.normalize("action", batch["action"].float())
        weights = self.sample_weights(batch)
        if self.config.head == "gmm":
            return self._gmm_loss(obs, batch, target, weights)
        prediction = self.predict_chunk(obs, batch["task"])
        return chunk_mse(prediction, target, batch["action_is_pad"], weights)

    def sample_weights(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """How much each sample of `batch` counts (b), or None: all alike. A fine-tune that
        weighs a person's corrections above the policy's own steps says so here."""
        return None

    def _gmm_loss(
        self,
        obs: Mapping[str, torch.Tensor],
        batch: Mapping[str, torch.Tensor],
        target: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        logits, means, std = self.mixture(obs, batch["task"])
        logits, means, std = logits.float(), means.float(), std.float()
        valid = (~batch["action_is_pad"]).unsqueeze(-1).expand_as(target)  # b h a
        valid = rearrange(valid, "b h a -> b 1 (h a)").float()
        x = rearrange(target, "b h a -> b 1 (h a)")
        # per-mode log-density over the valid (not padded) values of the chunk
        log_density = -0.5 * ((x - means) / std) ** 2 - std.log() - 0.9189385332046727
        per_mode = (log_density * valid).sum(-1) + F.log_softmax(logits, dim=-1)
        nll = -torch.logsumexp(per_mode, dim=-1) / valid.sum((1, 2)).clamp(min=1)
        if weights is None:
            loss = nll.mean()
        else:
            loss = (weights * nll).sum() / weights.sum().clamp(min=1e-12)
        with torch.no_grad():
            best = means[torch.arange(len(logits), device=logits.device), logits.argmax(-1)]
            mse = (((best - x[:, 0]) ** 2) * valid[:, 0]).sum() / valid.sum().clamp(min=1)
        return loss, {"nll": float(loss.detach()), "mse": float(mse)}
