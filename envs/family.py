"""What an environment family tells the rest of the code: the one description each family module
provides as `FAMILY = EnvFamily(...)`, and the small types it is made of.

A family is a kind of environment with its own names, suites, observations and scripted expert:
Meta-World's arm tasks (`envs.metaworld`), the discrete mazes (`envs.maze`). `envs.registry`
holds the table from family name to module and imports a module the first time its family is
named, so naming one family never imports another's simulator. `envs.make`/`suite`, the
recorder (`il.record`), evaluation (`il.evaluate`, `il.policies.expert`) and the CLI read only
this description, so adding a family is one module and one table row (docs/envs.md).

This module imports nothing heavy: the registry and `import envs` load it before any family.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import gymnasium as gym

    from envs.language_motion import MotionLabelling
    from envs.suite import TaskSuite

__all__ = [
    "EnvFamily",
    "Expert",
    "Listing",
    "RecordSpec",
    "Recording",
    "StepKey",
    "UnknownNameError",
    "unknown",
]


class UnknownNameError(ValueError):
    """An unknown env, suite, split or camera name; the message lists valid or close names."""


def unknown(kind: str, name: str, valid: Sequence[str]) -> UnknownNameError:
    """The one-line error for an unknown name: the closest valid names, or all of them."""
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    if close:
        hint = "did you mean " + " or ".join(repr(c) for c in close) + "?"
    else:
        hint = "valid: " + ", ".join(valid)
    return UnknownNameError(f"unknown {kind} {name!r}; {hint}")


class Expert(Protocol):
    """A family's scripted expert for one task: what it does and how it decided."""

    def act(
        self, observation: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The action, as the env takes it and a store keeps it (dtype and shape of the store's
        `action` key), and the procedure behind it: store key → this step's array."""
        ...


@dataclass(frozen=True)
class StepKey:
    """One per-step key a recording stores: shape without time, dtype and meaning. The same
    fields as the DemoStore's `KeySpec`, which `envs` cannot import."""

    shape: tuple[int, ...]
    dtype: str
    description: str
    chunk_steps: int | None = None
    """Time steps per chunk; None lets the store choose from the size of one step."""


@dataclass(frozen=True)
class RecordSpec:
    """What an expert recording asks for, whatever the family."""

    obs: tuple[str, ...]
    """Observation keys to store (a family may add the keys its expert reads)."""
    image_size: int
    max_episode_steps: int
    steps_after_success: int | None
    """Steps kept after the first success; None records the full episode."""
    action_noise: float = 0.0
    """Standard deviation of Gaussian noise added to the executed action (0: none)."""
    human_proxy: Any = None
    """`envs.human_proxy.HumanProxy` settings to store the episodes as a person's video would
    show them (images, distorted keypoints, a grasp read from the images) instead of the
    expert's recording; None: the expert's recording."""
    track_cameras: tuple[str, ...] | None = None
    """The two cameras to record motion tracks in (`envs.tracks`); None: the family's own
    pair, (): none."""


@dataclass(frozen=True)
class Recording:
    """What a family's expert recordings of one suite store, from `EnvFamily.recording`.

    The recorder writes, per step, `obs/<key>` for each of `obs`, `action` (and
    `executed_action` under action noise), `reward`, `success`, the expert's procedure and the
    family's labels; `keys` describes every one of them, in store order. Sent to the recording
    workers with every episode, so the label functions must pickle (module-level functions or
    `functools.partial` of them).
    """

    obs: tuple[str, ...]
    """Observation keys stored: the request's, plus any the expert reads."""
    keys: dict[str, StepKey]
    source: dict[str, Any]
    """The store's `source` attributes beyond env, suite, split and tasks (which the recorder
    writes for every family): versions, episode settings, names behind indices."""
    step_labels: Callable[[gym.Env], dict[str, np.ndarray]] | None = None
    """Per step, before the action: labels read from the env (Meta-World: the sim state)."""
    episode_labels: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]] | None = None
    """Per episode, from its stacked steps: labels that need the whole episode (Meta-World: the
    language-motion label, which looks a few steps ahead)."""
    finish: Callable[[gym.Env, dict[str, np.ndarray], int], dict[str, np.ndarray]] | None = None
    """Per episode, last: what the store keeps of the rollout's arrays, from the env it ran in
    and its seed (a human-proxy recording: the views rendered again, keypoints as a hand
    tracker reports them); None keeps the arrays."""
    episode_source: str = "expert"
    """Who each stored episode is by (the episodes' `source`): the expert, or `human` for a
    human-proxy recording."""


@dataclass(frozen=True)
class Listing:
    """What `il envs` prints for a family."""

    title: str
    suites: tuple[tuple[str, str, str], ...]
    """Rows of (name or pattern, number of tasks, splits)."""
    notes: tuple[tuple[str, str], ...] = ()
    """Further lines of (label, text): tasks, cameras, single envs, ..."""


@dataclass(frozen=True)
class EnvFamily:
    """Everything code outside a family's module needs to know about the family.

    Names handed to the functions below are the part after the family prefix: for
    `metaworld/MT10`, `suite("MT10", "train", 0)`. Name errors are `UnknownNameError`s, one
    line each. A task of a family's suite names its family in `task.family`, so code holding
    only a task (a policy factory in an evaluation worker) finds the family's expert.
    """

    name: str
    """The prefix of the family's env names: `metaworld` in `metaworld/MT10`."""
    example: str
    """A small suite to try the family with, e.g. `maze/tunnel16/3`."""
    obs_keys: tuple[str, ...]
    """Default observation keys."""
    max_episode_steps: int
    """Default episode length."""
    fps: float
    """Steps per second of simulated time: the store's `fps`."""
    action_convention: Mapping[str, Any]
    """How to read an action, in the JSON form of `robots.action.ActionSpec`: the store's
    `action` attributes, checked against every checkpoint evaluated in the family."""
    suite: Callable[[str, str, int], TaskSuite]
    """`(name, split, benchmark seed)` → a suite of tasks."""
    make: Callable[..., gym.Env]
    """`(name, *, task_seed, **env keyword arguments)` → one env."""
    parse_obs: Callable[[str | None], tuple[str, ...]]
    """`--obs` text (None: the default) → observation keys, or a one-line error."""
    expert: Callable[[Any], Expert]
    """A task of one of the family's suites → its scripted expert."""
    recording: Callable[[TaskSuite, RecordSpec], Recording]
    """What expert recordings of a suite store; a one-line `ValueError` for a request the
    family cannot record (action noise on discrete actions)."""
    listing: Listing
    env_names: tuple[str, ...] = ()
    """Every single-env name, where there are finitely many (`envs.list_envs`)."""
    suite_names: tuple[str, ...] = ()
    """Every suite name, where there are finitely many (`envs.list_suites`)."""
    make_vec: Callable[..., gym.vector.VectorEnv] | None = None
    """`(name, *, envs_per_task, vectorization_mode, split, task_seed, **env keyword
    arguments)` → a vector env; None: every task of `suite(name, split, task_seed)`."""
    video_options: Mapping[str, Any] = field(default_factory=dict)
    """Env keyword arguments for filming an episode, besides `render_mode` and `render_size`."""
    track_cameras: tuple[str, ...] = ()
    """The two cameras expert recordings store motion tracks in by default (`envs.tracks`);
    (): a family with no gripper to track."""
    motion_labels: MotionLabelling | None = None
    """How the family's expert recordings are labelled with language motions (the store keys
    they are read from and the thresholds), so a store recorded before it held labels can be
    labelled afterwards; None: a family whose recordings have no hand to label."""
