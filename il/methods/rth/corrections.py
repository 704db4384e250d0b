"""Simulated corrections for RT-H and its flat baseline (METHODS §2b), as `il.interventions`
interveners for `il eval --intervene`.

The simulated person knows what the scripted expert would do from the current state, in the
words the demonstrations were labelled with: the oracle phrase is the label the recording's
labeller gives the expert's next few steps, tried from a copy of the moment
(`MotionOracle`). Two ways of stepping in, each after `patience` consecutive steps of
disagreement, for `hold` steps:

- `expert-motion` (RT-H): the policy's predicted phrase differs from the oracle's; the
  correction is the oracle phrase, given through the policy's intermediate-output hook, so the
  policy's own action head executes it. Recorded: the phrase given (`corrected_motion`) and the
  one the policy predicted (`predicted_motion`).
- `expert-takeover` (the flat baseline's teleoperated corrections): the phrase of the policy's
  action differs from the phrase of the expert's action; the expert's actions are sent instead.

Both record the expert's action at every step (`expert_action`), so one correction store serves
every way of learning from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

import envs
from envs.language_motion import VOCABULARY, label_action, label_steps
from il.interventions import InterveneSpec, KeyDescription

__all__ = ["ExpertMotionCorrector", "ExpertTakeover", "MotionOracle"]


class MotionOracle:
    """The phrase for what a task's scripted expert would do from the env's current state, as
    its family's recordings label it: the expert is stepped `window` steps ahead inside the
    env's `lookahead()` (which undoes them) and the labeller reads those steps."""

    def __init__(self, task: Any) -> None:
        family = envs.family_of(task.family)
        if family.motion_labels is None:
            raise ValueError(f"{family.name} records no language motions to correct with")
        self.labelling = family.motion_labels
        self.expert = family.expert(task)

    def __call__(self, env: Any, observation: Mapping[str, np.ndarray]) -> tuple[str, np.ndarray]:
        """The oracle phrase and the expert's action now."""
        unwrapped = getattr(env, "unwrapped", env)
        steps: dict[str, list[np.ndarray]] = {}
        first: np.ndarray | None = None
        with unwrapped.lookahead():
            obs = observation
            for k in range(self.labelling.window + 1):
                action, procedure = self.expert.act(obs)
                first = action if first is None else first
                values = {**{f"obs/{key}": v for key, v in obs.items()}, **procedure}
                for key in self.labelling.keys:
                    steps.setdefault(key, []).append(np.asarray(values[key]))
                if k == self.labelling.window:
                    break
                obs, *_ = unwrapped.step(action)
        labels = label_steps({k: np.stack(v) for k, v in steps.items()}, self.labelling)
        assert first is not None
        return VOCABULARY[int(labels[0])], first


def _inner(policy: Any) -> Any:
    """The policy behind evaluation's task-bound wrapper."""
    return getattr(policy, "policy", policy)


class _Corrector:
    """What both interveners share: the oracle, the disagreement count and the hold."""

    def __init__(self, task: Any, spec: InterveneSpec, policy_info: Mapping[str, Any]) -> None:
        self.spec, self.info = spec, dict(policy_info)
        self.oracle = MotionOracle(task)
        self.disagreeing = 0
        self.holding = 0

    def begin(self, env: Any, seed: int) -> None:
        self.disagreeing = self.holding = 0

    def _after_policy_step(self, agrees: bool) -> None:
        self.disagreeing = 0 if agrees else self.disagreeing + 1
        if self.disagreeing >= self.spec.patience:
            self.holding, self.disagreeing = self.spec.hold, 0

    @classmethod
    def source(cls, policy_info: Mapping[str, Any]) -> dict[str, Any]:
        return {"intervener": cls.name}


class ExpertMotionCorrector(_Corrector):
    """RT-H's simulated language correction: the oracle phrase overrides the policy's own."""

    name: ClassVar[str] = "expert-motion"

    @classmethod
    def check(cls, policy: Any) -> dict[str, Any]:
        from il.policies.hierarchy import IntermediateOutput

        if not (
            isinstance(policy, IntermediateOutput) and policy.intermediate_name == "language_motion"
        ):
            raise ValueError(
                f"--intervene expert-motion corrects a policy in words; {policy.name} predicts "
                "no language motion (train --policy rth, or use --intervene expert-takeover)"
            )
        return {"vocabulary": list(policy.vocabulary), "action_dim": policy.spec.action_dim}

    @classmethod
    def step_keys(cls, policy_info: Mapping[str, Any]) -> dict[str, KeyDescription]:
        return {
            "corrected_motion": (
                (),
                "int16",
                "phrase the corrector gave: index into attrs source.corrected_motion_vocabulary, "
                "-1 where it did not correct",
            ),
            "predicted_motion": (
                (),
                "int16",
                "phrase the policy predicted: index into attrs source.corrected_motion_vocabulary",
            ),
            "expert_motion": (
                (),
                "int16",
                "phrase of what the expert would do here (the corrector's, corrected or not): "
                "index into attrs source.corrected_motion_vocabulary",
            ),
            "expert_action": (
                (int(policy_info["action_dim"]),),
                "float32",
                "the scripted expert's action in this state",
            ),
        }

    @classmethod
    def source(cls, policy_info: Mapping[str, Any]) -> dict[str, Any]:
        vocabulary = list(policy_info["vocabulary"])
        return super().source(policy_info) | {
            f"{key}_vocabulary": vocabulary
            for key in ("corrected_motion", "predicted_motion", "expert_motion")
        }

    def _index(self, phrase: str) -> int:
        vocabulary = self.info["vocabulary"]
        return vocabulary.index(phrase) if phrase in vocabulary else -1

    def act(
        self, policy: Any, env: Any, observation: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        phrase, expert_action = self.oracle(env, observation)
        inner = _inner(policy)
        corrected = self.holding > 0
        if corrected:
            inner.override_intermediate(phrase, steps=1)
            self.holding -= 1
        action = policy.act(observation)
        predicted = str(inner.predicted_intermediate)
        if not corrected:
            self._after_policy_step(predicted == phrase)
        return action, {
            "intervention": np.bool_(corrected),
            "corrected_motion": np.int16(self._index(phrase) if corrected else -1),
            "predicted_motion": np.int16(self._index(predicted)),
            "expert_motion": np.int16(self._index(phrase)),
            "expert_action": np.asarray(expert_action, np.float32),
        }


class ExpertTakeover(_Corrector):
    """The flat baseline's teleoperated correction: the expert's own actions replace the
    policy's. Disagreement is judged in the same words, from one action each: the phrase of the
    policy's action against the phrase of the expert's."""

    name: ClassVar[str] = "expert-takeover"

    def __init__(self, task: Any, spec: InterveneSpec, policy_info: Mapping[str, Any]) -> None:
        super().__init__(task, spec, policy_info)
        self.previous: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def check(cls, policy: Any) -> dict[str, Any]:
        return {"action_dim": policy.spec.action_dim}

    @classmethod
    def step_keys(cls, policy_info: Mapping[str, Any]) -> dict[str, KeyDescription]:
        return {
            "expert_action": (
                (int(policy_info["action_dim"]),),
                "float32",
                "the scripted expert's action in this state",
            )
        }

    def begin(self, env: Any, seed: int) -> None:
        super().begin(env, seed)
        self.previous = None

    def act(
        self, policy: Any, env: Any, observation: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        expert_action = np.asarray(self.oracle.expert.act(observation)[0], np.float32)
        own = np.asarray(policy.act(observation), np.float32)  # keeps its history in step
        corrected = self.holding > 0
        if corrected:
            self.holding -= 1
        else:
            before_own, before_expert = self.previous or (None, None)
            agrees = label_action(own, before_own) == label_action(expert_action, before_expert)
            self._after_policy_step(agrees)
        action = expert_action if corrected else own
        self.previous = (own, expert_action)
        return action, {"intervention": np.bool_(corrected), "expert_action": expert_action}
