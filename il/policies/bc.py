"""Behaviour cloning: regress the expert's actions from observations.

The simplest method and the baseline every other one must beat. An observation encoder (state
MLP input, a spatial-softmax CNN per camera, a task one-hot) feeds an MLP that predicts a chunk
of `action_horizon` future actions at once; `n_action_steps` of them are executed before the
next prediction, or, with `temporal_ensemble`, every step predicts and overlapping chunks vote
(ACT, Zhao et al. 2023). The loss is the mean squared error on normalized actions, over the
steps that are not padding (an episode's end).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from einops import rearrange

from il.data.normalize import Normalizer
from il.policies.base import DataSpec, Policy, register
from il.policies.blocks import MLP, ObservationConfig, ObservationEncoder

__all__ = ["BCConfig", "BCPolicy"]


@dataclass
class BCConfig(ObservationConfig):
    """Behaviour cloning."""

    action_horizon: int = 1
    """Future actions predicted at once (the action chunk)."""
    n_action_steps: int = 1
    """Actions of each chunk executed before predicting again (≤ action_horizon)."""
    temporal_ensemble: float | None = None
    """If set, predict every step and average overlapping chunks with weights exp(-m·age)."""
    hidden: list[int] = field(default_factory=lambda: [512, 512, 512])
    """Widths of the MLP head's hidden layers."""
    dropout: float = 0.0
    layer_norm: bool = False


@register
class BCPolicy(Policy):
    name = "bc"
    Config = BCConfig

    def __init__(self, config: BCConfig, spec: DataSpec, normalizer: Normalizer) -> None:
        super().__init__(config, spec, normalizer)
        self.encoder = ObservationEncoder.from_config(
            config, spec.obs_shapes, spec.tasks, spec.instructions
        )
        self.head = MLP(
            self.encoder.out_dim,
            config.hidden,
            config.action_horizon * spec.action_dim,
            dropout=config.dropout,
            layer_norm=config.layer_norm,
        )

    def predict_chunk(self, obs: Mapping[str, torch.Tensor], task: torch.Tensor) -> torch.Tensor:
        out = self.head(self.encoder(obs, task))
        return rearrange(out, "b (h a) -> b h a", h=self.config.action_horizon)

    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        obs = self.training_observations(batch)
        target = self.normalize("action", batch["action"].float())
        prediction = self.predict_chunk(obs, batch["task"])
        valid = (~batch["action_is_pad"]).unsqueeze(-1).to(prediction.dtype)  # b h 1
        error = (prediction - target) ** 2 * valid
        loss = error.sum() / (valid.sum() * target.shape[-1]).clamp(min=1)
        first = ((prediction[:, 0] - target[:, 0]) ** 2).mean()
        return loss, {"mse": float(loss.detach()), "mse_first_action": float(first.detach())}
