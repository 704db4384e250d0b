"""Procedure cloning on mazes (Yang, Schuurmans, Abbeel, Nachum 2022): learn the expert's
search, not just its answer.

The BFS expert of `envs.maze` computes its action with a procedure: maps x_1 … x_L, one per
frontier layer of a breadth-first search from the goal, each reached cell holding the action
toward the goal, until the agent's cell is reached. Behaviour cloning learns only the last step
(observation → action) and has to guess the search from a handful of mazes; procedure cloning
learns the search itself, with the Markov factorisation p(x_l | x_{l-1}, s): one fully
convolutional *step model* maps the maze grid plus the previous map to the next map. A BFS step
is local (a cell is reached from a reached neighbour), so a small convolution can learn it
exactly and it holds in mazes never seen in training.

Training is teacher forcing: pairs (x_{l-1} → x_l) of recorded procedures (x_0 = nothing
reached), per-cell cross-entropy. Acting iterates the step model from x_0, taking the argmax
class per cell, until the agent's cell holds an action (at most `max_layers` times); that
action is sent, a random one if the agent's cell is never reached. The predicted chain is the
policy's intermediate output (`IntermediateOutput`): readable after each action and
overridable before it, e.g. by a planner's own maps.

Architecture and defaults follow the paper's code: 5 conv layers, 3×3, stride 1, no pooling,
filters 128-128-256-256-5 (`width=256`), ReLU; input channels wall, goal, agent and the one-hot
previous map (8 in all).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from envs.maze import AGENT, LAYERS_KEY, MAPS_KEY, NOT_REACHED
from il.config import limits
from il.data.normalize import Normalizer
from il.policies.base import DataSpec, Policy
from il.policies.hierarchy import IntermediateOutput

__all__ = ["LAYERS_KEY", "MAPS_KEY", "MazeStepModel", "PCMazeConfig", "PCMazePolicy"]

CLASSES = NOT_REACHED + 1
"""Classes of a map cell: the 4 actions and "not reached"."""


@dataclass
class PCMazeConfig:
    """Procedure cloning on mazes: a fully convolutional BFS step model."""

    width: int = field(default=256, metadata=limits(at_least=2))
    """Filters of the step model are width/2, width/2, width, width, 5 (256: the paper's)."""
    pairs_per_window: int = field(default=1, metadata=limits(at_least=1))
    """Teacher-forced (x_{l-1} → x_l) pairs per training window. They are drawn uniformly from
    all pairs of the batch's windows, so every pair in the data is equally likely, as in the
    paper's flat dataset of pairs."""
    max_layers: int = field(default=100, metadata=limits(at_least=1))
    """Step-model applications at most per action (the paper's cap)."""


class MazeStepModel(nn.Module):
    """One step of the search: (grid, previous map) → logits of the next map, per cell."""

    def __init__(self, filters: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = [3 + CLASSES, *filters]
        for i in range(len(filters)):
            layers.append(nn.Conv2d(channels[i], channels[i + 1], 3, padding=1))
            if i < len(filters) - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, grid: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """`grid` (b 3 h w) float, `previous` (b h w) class indices → (b 5 h w) logits."""
        onehot = rearrange(F.one_hot(previous.long(), CLASSES), "b h w k -> b k h w")
        return self.net(torch.cat([grid, onehot.to(grid.dtype)], dim=1))


def grid_key(spec: DataSpec, method: str) -> str:
    """The one observation key of a maze policy: a `(size, size, 3)` grid."""
    keys = list(spec.obs_shapes)
    shape = spec.obs_shapes[keys[0]] if len(keys) == 1 else []
    if len(keys) != 1 or len(shape) != 3 or shape[-1] != 3 or shape[0] != shape[1]:
        raise ValueError(
            f"{method} reads one maze grid observation, (size, size, 3); set data.obs=[obs/grid] "
            f"(got {', '.join(f'{k} {spec.obs_shapes[k]}' for k in keys) or 'none'})"
        )
    return keys[0]


def grid_channels(grid: torch.Tensor) -> torch.Tensor:
    """Grid observations (b h w 3) uint8 → network input (b 3 h w) float."""
    return rearrange(grid, "b h w c -> b c h w").float()


def observed_grid(observation: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    """The grid of a raw env observation, or a one-line error naming what is missing."""
    env_key = DataSpec.env_key(key)
    if env_key not in observation:
        raise ValueError(f"observation lacks {env_key!r}; make the env with obs=({env_key!r},)")
    return np.asarray(observation[env_key])


def agent_cell(grid: np.ndarray) -> tuple[int, int]:
    cells = np.argwhere(grid[..., AGENT])
    if len(cells) != 1:
        raise ValueError("a maze grid needs exactly one agent cell")
    return int(cells[0, 0]), int(cells[0, 1])


def random_action(generator: torch.Generator | None = None) -> int:
    return int(torch.randint(NOT_REACHED, (1,), generator=generator))


class PCMazePolicy(IntermediateOutput, Policy):
    """Procedure cloning with a BFS step model; the intermediate output is the procedure."""

    name = "pc-maze"
    Config = PCMazeConfig
    preset = "maze.yaml"
    intermediate_name = "procedure"
    """(L, size, size) uint8 maps, the last of which the action is read from; an override may
    also give one (size, size) map."""

    def __init__(self, config: PCMazeConfig, spec: DataSpec, normalizer: Normalizer) -> None:
        super().__init__(config, spec, normalizer)
        self.grid_key = grid_key(spec, self.name)
        w = config.width
        self.step_model = MazeStepModel([w // 2, w // 2, w, w, CLASSES])

    @classmethod
    def extra_keys(cls, config: PCMazeConfig) -> dict[str, tuple[int, int]]:
        """Per-step store keys the loss reads besides observations and actions."""
        return {MAPS_KEY: (0, 0), LAYERS_KEY: (0, 0)}

    # --- training --------------------------------------------------------------------------------
    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        grid = grid_channels(batch[self.grid_key][:, 0])
        maps = batch[MAPS_KEY][:, 0]  # b L h w
        layers = batch[LAYERS_KEY][:, 0].long().clamp(min=1)  # b
        window, layer = sample_pairs(layers, len(layers) * self.config.pairs_per_window)
        target = maps[window, layer].long()
        previous = maps[window, (layer - 1).clamp(min=0)].long()
        previous = torch.where((layer == 0)[:, None, None], NOT_REACHED, previous)
        logits = self.step_model(grid[window], previous)
        loss = F.cross_entropy(logits.float(), target)
        with torch.no_grad():
            predicted = logits.argmax(1)
            new = target != previous
            metrics = {
                "ce": float(loss.detach()),
                "accuracy": float((predicted == target).float().mean()),
                "new_cell_accuracy": float((predicted == target)[new].float().mean())
                if new.any()
                else 1.0,
            }
        return loss, metrics

    # --- acting ----------------------------------------------------------------------------------
    @torch.no_grad()
    def procedures(self, grids: np.ndarray | torch.Tensor) -> list[np.ndarray]:
        """The predicted procedure of each grid (b h w 3): `(L, h, w)` uint8 maps, ending when
        the agent's cell is reached, the maps stop changing (a fixed point: applying the
        deterministic step again repeats it), or after `max_layers` steps."""
        device = next(self.parameters()).device
        if not isinstance(grids, torch.Tensor):
            grids = torch.as_tensor(np.asarray(grids))
        grids = grids.to(device)
        x = grid_channels(grids)
        b, _, h, w = x.shape
        agent = rearrange(grids[..., AGENT], "b h w -> b (h w)").argmax(1)
        current = torch.full((b, h, w), NOT_REACHED, dtype=torch.long, device=device)
        active = torch.arange(b, device=device)
        chains: list[list[np.ndarray]] = [[] for _ in range(b)]
        for _ in range(self.config.max_layers):
            nxt = self.step_model(x[active], current[active]).argmax(1)
            changed = (nxt != current[active]).flatten(1).any(1)
            current[active] = nxt
            maps = nxt.to(torch.uint8).cpu().numpy()
            for j, i in enumerate(active.tolist()):
                if changed[j]:
                    chains[i].append(maps[j])
            reached = nxt.flatten(1).gather(1, agent[active, None])[:, 0] != NOT_REACHED
            active = active[~(reached | ~changed)]
            if len(active) == 0:
                break
        return [np.stack(c) if c else np.zeros((0, h, w), np.uint8) for c in chains]

    def act(self, observation: Mapping[str, np.ndarray]) -> np.ndarray:
        """The action (one int in a (1,) int64 array) read off the procedure, after any
        override of it."""
        grid = observed_grid(observation, self.grid_key)
        procedure = self.resolve_intermediate(self.procedures(grid[None])[0])
        action = action_from_procedure(procedure, agent_cell(grid), self._cpu_generator())
        return np.array([action], dtype=np.int64)

    def intermediate_text(self) -> str:
        """How far the search went: the number of BFS layers the action was read from."""
        maps = np.asarray(self.intermediate)
        layers = 1 if maps.ndim == 2 else len(maps)
        return f"search: {layers} BFS layer{'' if layers == 1 else 's'}"

    def _cpu_generator(self) -> torch.Generator | None:
        # The episode's generator (`reset(seed=...)`), where it draws on the CPU.
        generator = self.generator
        return generator if generator is not None and generator.device.type == "cpu" else None

    def reset(self, task: str | None = None, seed: int | None = None) -> None:
        super().reset(task, seed)
        self.forget_intermediate()


def sample_pairs(layers: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` (window, layer) pairs drawn uniformly from all pairs of the windows, where
    window i has `layers[i]` maps (so pairs 0 .. layers[i] - 1)."""
    ends = layers.cumsum(0)
    flat = torch.randint(int(ends[-1]), (count,), device=layers.device)
    window = torch.searchsorted(ends, flat, right=True)
    return window, flat - (ends[window] - layers[window])


def action_from_procedure(
    procedure: Any, agent: tuple[int, int], generator: torch.Generator | None = None
) -> int:
    """The action the last map of a procedure holds at the agent's cell; random (drawn with
    `generator`) where it holds none (the search never reached the agent)."""
    maps = np.asarray(procedure)
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3:
        raise ValueError(f"a procedure is (L, h, w) maps or one (h, w) map, got {maps.shape}")
    if len(maps) == 0 or int(maps[-1][agent]) >= NOT_REACHED:
        return random_action(generator)
    return int(maps[-1][agent])
