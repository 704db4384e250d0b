"""`rth-intervene`: RT-H-Intervene — a trained `rth` policy whose motion head alone is
fine-tuned on language corrections (Belkhale et al. 2024, §RT-H-Intervene).

The paper's point: the action head already knows how to execute each phrase, so a correction in
words only has to teach the policy *which* phrase to say in the states where it said a wrong
one. Everything but the motion head stays frozen. The labels are the phrases given
(`corrected_motion`) on the corrected steps and, on the steps the person let pass, the phrase
the policy predicted itself (`predicted_motion`): as in IWR, the corrected steps carry
`intervention_share` of each batch's loss, and the others keep what the policy already says
right. `intervention_share=1` learns from the corrected steps alone (a person's corrections
recorded by `il deploy`, which have no `predicted_motion`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from il.config import limits
from il.data.normalize import Normalizer
from il.methods.rth.iwr import INTERVENTION_KEY, intervention_weights
from il.methods.rth.policy import RTHConfig, RTHPolicy
from il.policies.base import DataSpec

__all__ = ["RTHInterventionConfig", "RTHInterventionPolicy"]

CORRECTED_KEY = "corrected_motion"
PREDICTED_KEY = "predicted_motion"


@dataclass
class RTHInterventionConfig(RTHConfig):
    """RT-H's config (the checkpoint's own, taken by `il finetune`) and the corrections' share."""

    intervention_share: float = field(default=0.5, metadata=limits(at_least=0.0, at_most=1.0))
    """Share of each batch's motion loss carried by the corrected steps; the rest by the
    policy's own phrases on the uncorrected ones."""


class RTHInterventionPolicy(RTHPolicy):
    """An `rth` policy whose fine-tune trains only its motion head; it acts exactly as `rth`."""

    name = "rth-intervene"
    Config = RTHInterventionConfig
    preset = "rth_intervene.yaml"
    finetunes: ClassVar[str] = "rth"
    extra_keys_fix = (
        "record corrections with il eval --checkpoint RUN --intervene expert-motion "
        "--record {store}, or correct it in words during il deploy"
    )

    def __init__(
        self, config: RTHInterventionConfig, spec: DataSpec, normalizer: Normalizer
    ) -> None:
        super().__init__(config, spec, normalizer)
        given = spec.vocabularies.get(CORRECTED_KEY)
        if given is not None and list(given) != list(self.vocabulary):
            raise ValueError(
                f"the corrections' phrases (attrs source.{CORRECTED_KEY}_vocabulary) are not "
                f"this policy's {len(self.vocabulary)} language motions; record them with this "
                "checkpoint"
            )

    @classmethod
    def extra_keys(cls, config: RTHInterventionConfig) -> dict[str, tuple[int, int]]:
        keys = {CORRECTED_KEY: (0, 0), INTERVENTION_KEY: (0, 0)}
        if config.intervention_share < 1:
            keys[PREDICTED_KEY] = (0, 0)
        return keys

    def on_finetune_start(self) -> None:
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(name.startswith("motion_head."))

    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():  # frozen: only the motion head learns
            features = self.encoder(self.training_observations(batch), batch["task"])
        logits = self.motion_logits(features)
        corrected = batch[INTERVENTION_KEY][:, 0].bool()
        given = batch[CORRECTED_KEY][:, 0].long()
        if PREDICTED_KEY in batch:
            labels = torch.where(corrected, given, batch[PREDICTED_KEY][:, 0].long())
            weights = intervention_weights(corrected, self.config.intervention_share)
        else:
            labels = torch.where(corrected, given, torch.full_like(given, -1))
            weights = corrected.float()
        labelled = labels >= 0
        weights = weights.to(logits.device) * labelled
        per_sample = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
        loss = (weights * per_sample).sum() / weights.sum().clamp(min=1e-12)
        with torch.no_grad():
            hits = (logits.argmax(-1) == labels).float()
            on_corrected = (hits * corrected).sum() / corrected.sum().clamp(min=1)
        return loss, {
            "ce_motion": float(loss.detach()),
            "corrected_accuracy": float(on_corrected),
            "corrected_fraction": float(corrected.float().mean()),
        }
