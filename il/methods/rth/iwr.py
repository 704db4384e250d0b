"""`flat-iwr`: RT-H's flat baseline learning from corrections — a trained BC policy fine-tuned
on teleoperated corrections with intervention-weighted regression (IWR, Mandlekar et al. 2020).

A correction episode mixes the policy's own steps, which the person let pass, and the steps the
person drove (`intervention`), whose actions are the expert's. IWR regresses every recorded
action but gives the corrected steps a fixed share of each batch's loss (`intervention_share`,
a half by default) however rare they are, so a few corrections are not drowned by the many
steps the policy already took well, and those steps keep it from forgetting them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from il.config import limits
from il.policies.bc import BCConfig, BCPolicy

__all__ = ["IWRConfig", "IWRPolicy", "intervention_weights"]

INTERVENTION_KEY = "intervention"


def intervention_weights(corrected: torch.Tensor, share: float) -> torch.Tensor:
    """Per-sample weights (b) under which the corrected samples (`corrected`, b bool) carry
    `share` of the total and the others the rest; a batch with only one kind gives it all."""
    corrected = corrected.reshape(-1).bool()
    n_corrected = corrected.sum()
    n_own = corrected.numel() - n_corrected
    if n_corrected == 0 or n_own == 0:
        return torch.full(corrected.shape, 1.0 / max(corrected.numel(), 1))
    return torch.where(corrected, share / n_corrected, (1.0 - share) / n_own).float()


@dataclass
class IWRConfig(BCConfig):
    """BC's config (the checkpoint's own, taken by `il finetune`) and the corrections' share."""

    intervention_share: float = field(default=0.5, metadata=limits(at_least=0.0, at_most=1.0))
    """Share of each batch's loss carried by the corrected steps."""


class IWRPolicy(BCPolicy):
    """A BC policy whose fine-tune weighs the corrected steps; it acts exactly as BC."""

    name = "flat-iwr"
    Config = IWRConfig
    preset = "flat_iwr.yaml"
    finetunes: ClassVar[str] = "bc"

    @classmethod
    def extra_keys(cls, config: Any) -> dict[str, tuple[int, int]]:
        return {INTERVENTION_KEY: (0, 0)}

    extra_keys_fix: ClassVar[str] = (
        "record corrections with il eval --checkpoint RUN --intervene expert-takeover "
        "--record {store}"
    )

    def sample_weights(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        corrected = batch[INTERVENTION_KEY][:, 0]
        weights = intervention_weights(corrected, self.config.intervention_share)
        return weights.to(corrected.device)
