"""Someone other than the policy choosing some of its steps, in simulation: the loop a method
that learns from corrections needs (RT-H's language corrections, IWR's and HG-DAgger's
takeovers, RLIF's interventions as reward).

An `Intervener` watches a rollout of `il eval` step by step. At each step it sees the policy,
the env and the observation, and returns the action to send and what it did, as per-step arrays:
at least `intervention` (it, not the policy, chose this step), plus its own keys (the phrase it
gave, the expert's action). With `il eval --record STORE` every episode is committed to a
DemoStore as it finishes, with those keys beside the observation, action, reward and success,
and stored as source=intervention when any step was corrected: the data a fine-tune reads.

Interveners are rows of `INTERVENERS`, imported on first use like the methods, so the spine
knows none of them: each lives in the package of the method whose protocol it simulates.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

KeyDescription = tuple[tuple[int, ...], str, str]
"""A per-step key's shape (without time), dtype and description."""

__all__ = [
    "INTERVENERS",
    "InterveneSpec",
    "Intervener",
    "Interveners",
    "intervener_class",
]

INTERVENERS: dict[str, str] = {
    "expert-motion": "il.methods.rth.corrections:ExpertMotionCorrector",
    "expert-takeover": "il.methods.rth.corrections:ExpertTakeover",
}
"""Intervener name (`il eval --intervene NAME`) → `module:Class`, imported on first use."""


@dataclass(frozen=True)
class InterveneSpec:
    """When a simulated person steps in: after `patience` consecutive steps on which the policy
    disagrees with them, for the next `hold` steps (RT-H's protocol: m and n)."""

    patience: int = 3
    hold: int = 10

    def __post_init__(self) -> None:
        for name in ("patience", "hold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number of steps, at least 1, not {value}")


class Intervener(Protocol):
    """One task's simulated person, kept from one episode to the next by an evaluation worker."""

    name: ClassVar[str]

    @classmethod
    def check(cls, policy: Any) -> dict[str, Any]:
        """What this intervener needs to know of `policy` (read once, in the parent process);
        a `ValueError` in one line for a policy it cannot correct."""
        ...

    @classmethod
    def step_keys(cls, policy_info: Mapping[str, Any]) -> dict[str, KeyDescription]:
        """The per-step keys `act` returns besides `intervention`: shape, dtype, description."""
        ...

    @classmethod
    def source(cls, policy_info: Mapping[str, Any]) -> dict[str, Any]:
        """Store attributes a recording with this intervener carries (its name, vocabularies)."""
        ...

    def begin(self, env: Any, seed: int) -> None:
        """A new episode in `env`, just reset with `seed`."""

    def act(
        self, policy: Any, env: Any, observation: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The action to send for `observation` (the policy's or the intervener's) and this
        step's arrays: `intervention` and every key of `keys`."""
        ...


def intervener_class(name: str) -> type:
    """The class of intervener `name`; an unknown name is a `ValueError` listing the known."""
    row = INTERVENERS.get(name)
    if row is None:
        raise ValueError(
            f"unknown intervener {name!r}; choose one of: {', '.join(sorted(INTERVENERS))}"
        )
    module, _, cls = row.partition(":")
    return getattr(importlib.import_module(module), cls)


class Interveners:
    """A picklable factory of one task's intervener, sent to evaluation workers with each job.

    `policy_info` is what the intervener may need to know of the policy before its first step
    (its `check` reads it once in the parent, so a policy it cannot correct fails in one line
    before any worker starts); `source` is the store attributes it adds."""

    def __init__(self, name: str, spec: InterveneSpec, policy: Any) -> None:
        self.name, self.spec = name, spec
        cls = intervener_class(name)
        self.policy_info: dict[str, Any] = cls.check(policy)
        self.keys = dict(cls.step_keys(self.policy_info))
        self.source: dict[str, Any] = cls.source(self.policy_info)

    def __call__(self, task: Any) -> Intervener:
        return intervener_class(self.name)(task, self.spec, self.policy_info)


def rollout_schema(spec: Any, suite: Any, interveners: Interveners | None, checkpoint: str) -> Any:
    """The store schema for `il eval --record`: the observation keys the policy (`spec`, a
    `DataSpec`) sees, the action sent, reward, success, `intervention` and the intervener's own
    keys; the attributes name the suite, its variations, the checkpoint and the intervener."""
    from il.data.store import KeySpec, StoreSchema

    keys = {
        key: KeySpec(
            tuple(shape),
            "uint8" if len(shape) == 3 else "float32",
            f"observation {key.removeprefix('obs/')} the policy saw",
        )
        for key, shape in spec.obs_shapes.items()
    }
    keys["action"] = KeySpec(
        (spec.action_dim,),
        "float32",
        "action sent: the policy's, or the intervener's where intervention",
    )
    keys["reward"] = KeySpec((), "float32", "reward after the action")
    keys["success"] = KeySpec((), "bool", "task solved after the action")
    keys["intervention"] = KeySpec((), "bool", "the intervener, not the policy, chose the step")
    source: dict[str, Any] = {
        "env": spec.env.get("env", ""),
        "suite": suite.name,
        "split": suite.split,
        "tasks": list(suite.task_names),
        "task_seed": suite.task_seed,
        "checkpoint": checkpoint,
        **{k: spec.env[k] for k in ("image_size", "max_episode_steps") if k in spec.env},
    }
    if interveners is not None:
        for key, (shape, dtype, description) in interveners.keys.items():
            keys[key] = KeySpec(tuple(shape), dtype, description)
        source |= interveners.source | {
            "intervene": {"patience": interveners.spec.patience, "hold": interveners.spec.hold}
        }
    import envs

    fps = envs.family_of(suite.name).fps
    return StoreSchema(keys=keys, fps=fps, action=dict(spec.action), source=source)


def intervention_statistics(store: Any) -> dict[str, Any] | None:
    """What `il info` says of a store's interventions: steps and episodes an intervener (or
    an operator) chose, who did, and the phrases a language correction gave most; None for a
    store without the `intervention` key."""
    keys = store.schema.keys
    if "intervention" not in keys:
        return None
    phrases_key = "corrected_motion" if "corrected_motion" in keys else None
    read = ["intervention", *([phrases_key] if phrases_key else [])]
    steps = episodes = 0
    given: dict[int, int] = {}
    for i in range(store.num_episodes):
        arrays = store.read_episode(i, read)
        flags = np.asarray(arrays["intervention"], bool)
        steps += int(flags.sum())
        episodes += bool(flags.any())
        if phrases_key:
            for index in np.asarray(arrays[phrases_key])[flags]:
                given[int(index)] = given.get(int(index), 0) + 1
    source = store.schema.source
    vocabulary = [str(p) for p in source.get("corrected_motion_vocabulary", [])]
    named = {
        (vocabulary[k] if 0 <= k < len(vocabulary) else f"#{k}"): n
        for k, n in sorted(given.items(), key=lambda kv: -kv[1])
    }
    return {
        "steps": steps,
        "fraction": steps / store.num_steps if store.num_steps else 0.0,
        "episodes": episodes,
        "by": source.get("intervener", "operator"),
        "settings": source.get("intervene"),
        "phrases": named,
    }
