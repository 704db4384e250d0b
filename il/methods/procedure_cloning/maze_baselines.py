"""The baselines procedure cloning is measured against on mazes: BC, aug-BC and aux-BC.

All three map the maze grid (wall, goal, agent channels) straight to the action, with the
paper's network: 5 conv layers (3×3, stride 1) of width/2, width/2, width, width, width filters
with 2×2 max-pooling after the first and third, a dense layer to `width` features, and an MLP
(2×256, ReLU) to the 4 action logits, learnt by cross-entropy. They differ in what else they
see in training:

- `bc-maze`: nothing else.
- `aug-bc-maze`: each grid randomly translated and zoomed (nearest-neighbour, empty outside):
  the usual remedy for overfitting a few layouts, which cannot teach the search.
- `aux-bc-maze`: an auxiliary head predicts the expert's final BFS map (the action of every
  cell the search reached) from the same features; the procedure is used as a target but not
  chained, which isolates what chaining buys.

Acting samples from the predicted action distribution by default, as the paper's code does: a
deterministic policy that is wrong in a cell loops forever, a sampled one may still stumble
onto the goal.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from envs.maze import NOT_REACHED
from il.config import limits
from il.data.normalize import Normalizer
from il.methods.procedure_cloning.maze import (
    LAYERS_KEY,
    MAPS_KEY,
    grid_channels,
    grid_key,
    observed_grid,
)
from il.policies.base import DataSpec, Policy

__all__ = [
    "AugMazeBCConfig",
    "AugMazeBCPolicy",
    "AuxMazeBCConfig",
    "AuxMazeBCPolicy",
    "MazeBCConfig",
    "MazeBCPolicy",
]


@dataclass
class MazeBCConfig:
    """Behaviour cloning on maze grids."""

    width: int = field(default=256, metadata=limits(at_least=2))
    """Encoder filters width/2, width/2, width, width, width and `width` features (256: the
    paper's)."""
    hidden: list[int] = field(default_factory=lambda: [256, 256], metadata=limits(at_least=1))
    """Hidden layers of the action MLP (and of the auxiliary head)."""
    augment: bool = False
    """Random translation and zoom of the grid in training."""
    shift: float = field(default=0.1, metadata=limits(at_least=0, below=1))
    """Largest translation, as a fraction of the grid side."""
    zoom: float = field(default=0.1, metadata=limits(at_least=0, below=1))
    """Largest relative zoom in or out."""
    aux_weight: float = field(default=0.0, metadata=limits(at_least=0))
    """Weight of the auxiliary loss on the expert's final BFS map (0: no auxiliary head)."""
    sample: bool = True
    """Act by sampling the action distribution (the paper's code), else its argmax."""


@dataclass
class AugMazeBCConfig(MazeBCConfig):
    """BC on maze grids with translation and zoom augmentation."""

    augment: bool = True


@dataclass
class AuxMazeBCConfig(MazeBCConfig):
    """BC on maze grids with an auxiliary head predicting the expert's final BFS map."""

    aux_weight: float = 1.0


def _mlp(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    dims = [in_dim, *hidden]
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(dims):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(dims[-1], out_dim))


class GridEncoder(nn.Module):
    """Conv encoder with pooling: (b 3 s s) → (b width)."""

    def __init__(self, size: int, width: int) -> None:
        super().__init__()
        half = width // 2
        pooled = (size + 3) // 4  # side after two 2×2 poolings that keep a partial edge
        self.net = nn.Sequential(
            nn.Conv2d(3, half, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(half, half, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(half, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(width * pooled * pooled, width),
            nn.ReLU(),
        )

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return self.net(grid)


def augment_grids(grid: torch.Tensor, shift: float, zoom: float) -> torch.Tensor:
    """Per sample, a random translation of up to `shift` of the side and a zoom of up to
    ±`zoom`, nearest-neighbour so cells stay cells; what comes in from outside is empty."""
    b = grid.shape[0]
    scale = 1 + (torch.rand(b, device=grid.device) * 2 - 1) * zoom
    offset = (torch.rand(b, 2, device=grid.device) * 2 - 1) * 2 * shift  # [-1, 1] coordinates
    theta = torch.zeros(b, 2, 3, device=grid.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = offset
    sampling = F.affine_grid(theta, list(grid.shape), align_corners=False)
    return F.grid_sample(grid, sampling, mode="nearest", padding_mode="zeros", align_corners=False)


class MazeBCPolicy(Policy):
    """Behaviour cloning on maze grids; `aug-bc-maze` and `aux-bc-maze` are its variants."""

    name = "bc-maze"
    Config = MazeBCConfig
    preset = "maze.yaml"

    def __init__(self, config: MazeBCConfig, spec: DataSpec, normalizer: Normalizer) -> None:
        super().__init__(config, spec, normalizer)
        if config.width < 2:
            raise ValueError(f"model.width must be at least 2, not {config.width}")
        if config.aux_weight < 0:
            raise ValueError(f"model.aux_weight must be >= 0, not {config.aux_weight}")
        self.grid_key = grid_key(spec, self.name)
        self.size = int(spec.obs_shapes[self.grid_key][0])
        self.encoder = GridEncoder(self.size, config.width)
        self.policy_head = _mlp(config.width, config.hidden, NOT_REACHED)
        self.aux_head = (
            _mlp(config.width, config.hidden, self.size * self.size * NOT_REACHED)
            if config.aux_weight > 0
            else None
        )

    @classmethod
    def extra_keys(cls, config: MazeBCConfig) -> dict[str, tuple[int, int]]:
        """Per-step store keys the loss reads besides observations and actions."""
        return {MAPS_KEY: (0, 0), LAYERS_KEY: (0, 0)} if config.aux_weight > 0 else {}

    def logits(self, grid: torch.Tensor) -> torch.Tensor:
        """(b 3 h w) grids → (b 4) action logits."""
        return self.policy_head(self.encoder(grid))

    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        grid = grid_channels(batch[self.grid_key][:, 0])
        if self.config.augment and self.training:
            grid = augment_grids(grid, self.config.shift, self.config.zoom)
        action = batch["action"][:, 0, 0].long()
        features = self.encoder(grid)
        logits = self.policy_head(features)
        ce = F.cross_entropy(logits.float(), action)
        metrics = {
            "ce": float(ce.detach()),
            "accuracy": float((logits.argmax(-1) == action).float().mean()),
        }
        loss = ce
        if self.aux_head is not None:
            maps = batch[MAPS_KEY][:, 0]  # b L h w
            last = batch[LAYERS_KEY][:, 0].long().clamp(min=1) - 1
            final = maps[torch.arange(len(maps), device=maps.device), last].long()  # b h w
            aux = rearrange(
                self.aux_head(features), "b (h w k) -> b k h w", h=self.size, w=self.size
            )
            reached = final != NOT_REACHED  # the reference scores only cells the search reached
            per_cell = F.cross_entropy(
                aux.float(), final.clamp(max=NOT_REACHED - 1), reduction="none"
            )
            aux_ce = (per_cell * reached).sum() / reached.sum().clamp(min=1)
            loss = ce + self.config.aux_weight * aux_ce
            metrics["aux_ce"] = float(aux_ce.detach())
        return loss, metrics

    @torch.no_grad()
    def act(self, observation: Mapping[str, np.ndarray]) -> np.ndarray:
        """The action as one int in a (1,) int64 array."""
        device = next(self.parameters()).device
        grid = torch.as_tensor(observed_grid(observation, self.grid_key)[None], device=device)
        if self.training:
            self.eval()
            logits = self.logits(grid_channels(grid))
            self.train()
        else:
            logits = self.logits(grid_channels(grid))
        if self.config.sample:  # with the episode's generator when `reset(seed=...)` set one
            probs = torch.softmax(logits.float(), dim=-1)
            action = torch.multinomial(probs, 1, generator=self.generator)[:, 0]
        else:
            action = logits.argmax(-1)
        return action.cpu().numpy().astype(np.int64)


class AugMazeBCPolicy(MazeBCPolicy):
    name = "aug-bc-maze"
    Config = AugMazeBCConfig


class AuxMazeBCPolicy(MazeBCPolicy):
    name = "aux-bc-maze"
    Config = AuxMazeBCConfig
