"""Procedure cloning on Meta-World: learn the scripted expert's computation, then its action.

A Meta-World scripted expert computes its action in three steps, each recorded per step by
`il record` (see `docs/store.md`): it parses positions from the state (`procedure/hand`,
`procedure/object`, `procedure/goal`: x_0), decides which phase of its little state machine it
is in (`procedure/phase`: x_1), and picks the point it steers the hand toward and its grab effort
(`procedure/target`, `procedure/grab_effort`: x_2); the action moves the hand toward the target.
Behaviour cloning fits observation → action in one jump. Procedure cloning (Yang et al. 2022)
predicts the chain autoregressively, p(x_0|s) p(x_1|s,x_0) p(x_2|s,x_0,x_1) p(a|s,x_0,x_1,x_2):
every link is a simple function (positions are slices of the state, the target is an object or
goal position plus an offset, the action a gain on target − hand), which is what should carry
over to object and goal positions the demonstrations never covered.

Two methods share the networks: an observation encoder and trunk MLP, then one head per link.

- `pc-metaworld`: chained. Each head sees the trunk's features and the links before it;
  training feeds the recorded links (teacher forcing), acting feeds the predicted ones.
- `aux-bc-metaworld`: the same heads and losses without the chaining: every head, the action's
  included, sees the trunk's features only. The procedure is a target, not an input, which
  isolates what chaining buys over auxiliary supervision.

Plain BC is `--policy bc` with `model.head=mse`. Positions, targets and grab effort are learnt
by mean squared error on normalized values, the phase by cross-entropy.

While acting, `pc-metaworld` exposes the predicted procedure through `IntermediateOutput`: a
dict of `hand`, `object`, `goal`, `target` (3 floats each, metres), `phase` (int) and
`grab_effort` (float). An override may give any subset of those keys; the action is read from
the merged chain, so a caller can, e.g., move the target and watch the arm follow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from il.config import limits
from il.data.normalize import Normalizer
from il.policies.base import DataSpec, Policy
from il.policies.blocks import MLP, ObservationConfig, ObservationEncoder
from il.policies.hierarchy import IntermediateOutput

__all__ = ["PROCEDURE_KEYS", "AuxBCMetaWorldPolicy", "PCMetaWorldConfig", "PCMetaWorldPolicy"]

POSITIONS = ("hand", "object", "goal")
"""x_0: the positions the expert parsed."""
PHASE = "phase"
"""x_1: the expert's phase (an index into the task's phase names)."""
TARGET = ("target", "grab_effort")
"""x_2: where the expert steers the hand, and how hard it grips."""
PROCEDURE_KEYS = tuple(f"procedure/{n}" for n in (*POSITIONS, PHASE, *TARGET))
"""The store keys the chain is learnt from, as `il record --source expert` writes them."""
_CONTINUOUS = tuple(f"procedure/{n}" for n in (*POSITIONS, *TARGET))


@dataclass
class PCMetaWorldConfig(ObservationConfig):
    """Procedure cloning on Meta-World's scripted-expert procedure."""

    hidden: list[int] = field(default_factory=lambda: [256, 256], metadata=limits(at_least=1))
    """Widths of the trunk MLP on the observation encoder."""
    head_hidden: list[int] = field(default_factory=lambda: [256], metadata=limits(at_least=1))
    """Widths of each link's head (positions, phase, target, action)."""
    max_phases: int = field(default=16, metadata=limits(at_least=1))
    """Phase classes (Meta-World's experts have at most 6 phases)."""
    chain: bool = True
    """Feed each head the links before it (procedure cloning); False gives aux-BC."""
    procedure_weight: float = field(default=1.0, metadata=limits(at_least=0))
    """Weight of the procedure losses beside the action's."""


class PCMetaWorldPolicy(IntermediateOutput, Policy):
    """Chained heads observation → positions → phase → target → action."""

    name = "pc-metaworld"
    Config = PCMetaWorldConfig
    intermediate_name = "procedure"

    def __init__(self, config: PCMetaWorldConfig, spec: DataSpec, normalizer: Normalizer) -> None:
        super().__init__(config, spec, normalizer)
        self.encoder = ObservationEncoder.from_config(
            config, spec.obs_shapes, spec.tasks, spec.instructions
        )
        trunk = config.hidden[-1] if config.hidden else self.encoder.out_dim
        self.trunk = (
            nn.Sequential(MLP(self.encoder.out_dim, config.hidden[:-1], trunk), nn.Mish())
            if config.hidden
            else nn.Identity()
        )
        n_pos, n_phase, n_target = 3 * len(POSITIONS), config.max_phases, 4
        # What each head sees besides the trunk's features when chained: the links before it.
        inputs = (0, n_pos, n_pos + n_phase, n_pos + n_phase + n_target)
        if not config.chain:
            inputs = (0, 0, 0, 0)
        self.heads = nn.ModuleDict(
            {
                name: MLP(trunk + extra, config.head_hidden, out)
                for name, extra, out in zip(
                    ("positions", "phase", "target", "action"),
                    inputs,
                    (n_pos, n_phase, n_target, spec.action_dim),
                    strict=True,
                )
            }
        )

    @classmethod
    def extra_keys(cls, config: PCMetaWorldConfig) -> dict[str, tuple[int, int]]:
        """The procedure of the step, read with each window's anchor step."""
        return {key: (0, 0) for key in PROCEDURE_KEYS}

    @classmethod
    def extra_normalization(cls, config: PCMetaWorldConfig) -> dict[str, str]:
        """Continuous links are learnt on standardized values, like vector observations."""
        return {key: "mean_std" for key in _CONTINUOUS}

    # --- the chain -------------------------------------------------------------------------------
    def _features(self, obs: Mapping[str, torch.Tensor], task: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.encoder(obs, task))

    def _head(self, name: str, h: torch.Tensor, links: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat([h, *links], -1) if self.config.chain and links else h
        return self.heads[name](x)

    def _true_links(self, batch: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """Recorded links, normalized: positions (b 9), phase one-hot (b K), target (b 4)."""
        positions = torch.cat(
            [
                self.normalize(f"procedure/{n}", batch[f"procedure/{n}"][:, 0].float())
                for n in POSITIONS
            ],
            -1,
        )
        target = torch.cat(
            [
                self.normalize("procedure/target", batch["procedure/target"][:, 0].float()),
                self.normalize(
                    "procedure/grab_effort", batch["procedure/grab_effort"][:, 0].float()
                ).reshape(-1, 1),
            ],
            -1,
        )
        return [positions, self._one_hot(self._phases(batch)), target]

    def _phases(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        phase = batch["procedure/phase"][:, 0].long().reshape(-1)
        if len(phase) and int(phase.max()) >= self.config.max_phases:
            raise ValueError(
                f"the data has phase {int(phase.max())}; set model.max_phases above it"
            )
        return phase

    def _one_hot(self, phase: torch.Tensor) -> torch.Tensor:
        return F.one_hot(phase, self.config.max_phases).float()

    # --- training --------------------------------------------------------------------------------
    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        obs = self.training_observations(batch)
        h = self._features(obs, batch["task"])
        positions, phase_hot, target = self._true_links(batch)
        phase = self._phases(batch)
        # teacher forcing: each head gets the recorded links before it
        pred_positions = self._head("positions", h, [])
        phase_logits = self._head("phase", h, [positions])
        pred_target = self._head("target", h, [positions, phase_hot])
        pred_action = self._head("action", h, [positions, phase_hot, target])
        action = self.normalize("action", batch["action"][:, 0].float())
        mse_action = F.mse_loss(pred_action.float(), action)
        mse_positions = F.mse_loss(pred_positions.float(), positions)
        ce_phase = F.cross_entropy(phase_logits.float(), phase)
        mse_target = F.mse_loss(pred_target.float(), target)
        loss = mse_action + self.config.procedure_weight * (mse_positions + ce_phase + mse_target)
        with torch.no_grad():
            phase_accuracy = (phase_logits.argmax(-1) == phase).float().mean()
        return loss, {
            "mse": float(mse_action.detach()),
            "mse_positions": float(mse_positions.detach()),
            "ce_phase": float(ce_phase.detach()),
            "phase_accuracy": float(phase_accuracy),
            "mse_target": float(mse_target.detach()),
        }

    # --- acting ----------------------------------------------------------------------------------
    def predict_chunk(self, obs: Mapping[str, torch.Tensor], task: torch.Tensor) -> torch.Tensor:
        h = self._features(obs, task)
        positions = self._head("positions", h, [])
        phase = self._head("phase", h, [positions]).argmax(-1)
        target = self._head("target", h, [positions, self._one_hot(phase)])
        if len(h) == 1:  # one observation, as in act(): the chain is readable and overridable
            chain = self.resolve_intermediate(self._readable(positions[0], phase[0], target[0]))
            if self.config.chain:
                positions, phase, target = self._from_readable(chain, h.device)
        action = self._head("action", h, [positions, self._one_hot(phase), target])
        return action[:, None]  # b 1 a

    def _readable(
        self, positions: torch.Tensor, phase: torch.Tensor, target: torch.Tensor
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i, name in enumerate(POSITIONS):
            key = f"procedure/{name}"
            out[name] = self.unnormalize(key, positions[3 * i : 3 * i + 3].float()).cpu().numpy()
        out["phase"] = int(phase)
        out["target"] = self.unnormalize("procedure/target", target[:3].float()).cpu().numpy()
        effort = self.unnormalize("procedure/grab_effort", target[3:].float())
        out["grab_effort"] = float(effort.reshape(()))
        return out

    def _from_readable(
        self, chain: Mapping[str, Any], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        chain = {**self.predicted_intermediate, **dict(chain)}  # an override may give a subset
        unknown = sorted(set(chain) - {*POSITIONS, PHASE, *TARGET})
        if unknown:
            raise ValueError(
                f"unknown procedure key(s) {unknown}; a procedure has "
                f"{', '.join((*POSITIONS, PHASE, *TARGET))}"
            )

        def norm(name: str) -> torch.Tensor:
            value = torch.as_tensor(np.asarray(chain[name], np.float32), device=device)
            return self.normalize(f"procedure/{name}", value.reshape(-1))

        positions = torch.cat([norm(n) for n in POSITIONS])[None]
        target = torch.cat([norm("target"), norm("grab_effort")])[None]
        phase = int(chain[PHASE])
        if not 0 <= phase < self.config.max_phases:
            raise ValueError(f"phase {phase} is outside 0..{self.config.max_phases - 1}")
        return positions, torch.tensor([phase], device=device), target

    def intermediate_text(self) -> str:
        """The phase and the target the action steers to (metres), the links a person can check
        against the scene."""
        chain = {**(self.predicted_intermediate or {}), **dict(self.intermediate)}
        x, y, z = (float(v) for v in np.asarray(chain["target"]).reshape(3))
        return f"phase {int(chain[PHASE])}, target {x:.2f} {y:.2f} {z:.2f}"

    def reset(self, task: str | None = None, seed: int | None = None) -> None:
        super().reset(task, seed)
        self.forget_intermediate()


@dataclass
class AuxBCMetaWorldConfig(PCMetaWorldConfig):
    """aux-BC on Meta-World: the procedure's heads as auxiliary targets, no chaining."""

    chain: bool = False


class AuxBCMetaWorldPolicy(PCMetaWorldPolicy):
    """The same heads and losses as `pc-metaworld`, each on the trunk's features alone. Its
    predicted procedure is readable after `act()` like pc-metaworld's, but the action does not
    depend on it, so an override changes nothing."""

    name = "aux-bc-metaworld"
    Config = AuxBCMetaWorldConfig

    def __init__(
        self, config: AuxBCMetaWorldConfig, spec: DataSpec, normalizer: Normalizer
    ) -> None:
        if config.chain:
            raise ValueError("aux-bc-metaworld does not chain its heads; use pc-metaworld")
        super().__init__(config, spec, normalizer)
