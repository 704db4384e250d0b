"""The few-shot policy of inverse-dynamics pretraining (`pretrained-bc`): an MLP head on the
features of a pretrained, frozen image encoder — or on an encoder trained with it from scratch,
or on the true state (the two references).

Where it sits: `il fewshot` (pipeline.py) trains it with `il.train.train` on a few demos of a
task the encoder never saw. With `config.pretrained` set, the encoder is frozen from the start
(no gradients, eval mode: no random crop, whatever mode the head is in) and `on_train_start`
loads its weights from that `il pretrain` checkpoint before the first step; a step then costs the
head's step plus one encoder forward. The result is an ordinary checkpoint, encoder weights
included, that `il eval` and `il deploy` take like any other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from il.config import limits
from il.data.normalize import Normalizer
from il.methods.id_pretraining.objectives import EncoderConfig, read_encoder
from il.policies.base import DataSpec, Policy
from il.policies.blocks import MLP, ConvKeypointEncoder

__all__ = ["PretrainedBCConfig", "PretrainedBCPolicy"]


@dataclass
class PretrainedBCConfig:
    """A BC head on one camera's features (or on the state); saved in its checkpoint."""

    encoder: EncoderConfig | None = None
    """The image encoder; None: the policy sees the state vector only."""
    hidden: list[int] = field(default_factory=lambda: [256, 256], metadata=limits(at_least=1))
    dropout: float = field(default=0.1, metadata=limits(at_least=0, below=1))
    objective: str = ""
    """How the encoder was obtained (id, bc, ..., scratch, state): provenance only."""
    pretraining_tasks: list[str] = field(default_factory=list)
    """Tasks of the encoder's pretraining data: provenance, and the held-out check."""
    pretrained: str = ""
    """The `il pretrain` checkpoint whose encoder weights a fresh run loads and keeps frozen;
    empty: the encoder (if any) trains with the head, random crops included (`scratch`)."""


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
            if config.pretrained:
                raise ValueError("model.pretrained needs model.encoder (the state has none)")
            self.key = spec.vector_keys[0]
            self.encoder = None
            in_dim = spec.obs_shapes[self.key][0]
        self.head = MLP(in_dim, config.hidden, spec.action_dim, dropout=config.dropout)
        if self.encoder is not None and self.frozen:
            self.encoder.requires_grad_(False)

    @property
    def frozen(self) -> bool:
        """Whether the encoder is a pretrained one, fixed while the head trains."""
        return bool(self.config.pretrained) and self.encoder is not None

    def on_train_start(self) -> None:
        if self.encoder is not None and self.frozen:
            # A folder that is no encoder checkpoint raises PretrainError, a ValueError: train()
            # reports it in one line.
            self.encoder.load_state_dict(read_encoder(self.config.pretrained).weights())

    def train(self, mode: bool = True) -> PretrainedBCPolicy:
        super().train(mode)
        if self.encoder is not None and self.frozen:
            self.encoder.eval()  # frozen features: no random crop
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Current observations (`b ...`, normalized if a vector) → the head's input."""
        if self.encoder is None:
            return x.float()
        if self.frozen:
            with torch.no_grad():
                return self.encoder(x)
        return self.encoder(x)

    def predict_chunk(self, obs: Mapping[str, torch.Tensor], task: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(obs[self.key][:, -1]))[:, None]

    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        obs = self.training_observations(batch)
        prediction = self.predict_chunk(obs, batch.get("task", torch.zeros(1)))[:, 0]
        target = self.normalize("action", batch["action"][:, 0].float())
        loss = F.mse_loss(prediction, target)
        return loss, {"mse": float(loss.detach())}
