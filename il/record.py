"""Recording demonstrations from the scripted experts into a DemoStore, for every env family.

Episodes are rolled out in spawned worker processes (one per core) and committed by the parent
in a fixed order, one at a time, so the store is the same whatever the number of workers, and a
`kill -9` at any moment loses at most the episode being written. Re-running the same command
resumes: episodes whose (task, seed) is already in the store are skipped.

What a step stores comes from the suite's env family (`envs.family_of(suite.name).recording`),
so that one recording serves every method of il: the observation, the action, reward and success,
the expert's procedure, and the family's own labels — for Meta-World the expert's positions,
phase and target, a language-motion label and the full MuJoCo state; for a maze the BFS maps.
This module knows no family by name.
"""

from __future__ import annotations

import collections
import multiprocessing as mp
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

import envs
from envs.family import Recording, RecordSpec
from envs.suite import TaskSuite
from il.data.store import DemoStore, KeySpec, StoreSchema

__all__ = [
    "RecordPlan",
    "RecordSpec",
    "RecordSummary",
    "expert_schema",
    "plan_recording",
    "record_expert",
    "rollout_expert",
]


@dataclass(frozen=True)
class RecordPlan:
    """Everything a worker needs to roll out any episode of one recording; sent with every
    episode, so it holds the suite's name and class rather than the suite with all its tasks."""

    family: str
    suite_type: type[TaskSuite]
    suite_name: str
    spec: RecordSpec
    recording: Recording


@dataclass
class RecordSummary:
    recorded: int
    skipped: int
    discarded: int
    episodes_in_store: int


def plan_recording(suite: TaskSuite, spec: RecordSpec) -> RecordPlan:
    """What recording `spec` in `suite` stores, as its family says (a one-line `ValueError`
    for a request the family cannot record)."""
    if spec.action_noise < 0:
        raise ValueError(f"action noise must be 0 or more, not {spec.action_noise}")
    family = envs.family_of(suite.name)
    recording = family.recording(suite, spec)
    return RecordPlan(family.name, type(suite), suite.name, spec, recording)


def expert_schema(suite: TaskSuite, spec: RecordSpec) -> StoreSchema:
    """The store schema for expert recordings of `suite`."""
    return _schema(suite, plan_recording(suite, spec))


def _schema(suite: TaskSuite, plan: RecordPlan) -> StoreSchema:
    family = envs.family_of(plan.family)
    keys = {
        key: KeySpec(k.shape, k.dtype, k.description, k.chunk_steps)
        for key, k in plan.recording.keys.items()
    }
    source = {
        "env": family.name,
        "suite": suite.name,
        "split": suite.split,
        "tasks": list(suite.task_names),
        **plan.recording.source,
    }
    return StoreSchema(
        keys=keys, fps=family.fps, action=dict(family.action_convention), source=source
    )


def rollout_expert(plan: RecordPlan, task: Any, seed: int) -> tuple[dict[str, np.ndarray], Any]:
    """One expert episode of `task` (a task of the plan's suite) as per-step arrays plus its
    episode metadata."""
    spec, recording = plan.spec, plan.recording
    env = _episode_env(plan, task)
    expert = envs.family_of(plan.family).expert(task)
    obs, _ = env.reset(seed=seed)
    steps: dict[str, list[np.ndarray]] = {}

    def put(key: str, value: Any) -> None:
        steps.setdefault(key, []).append(np.asarray(value))

    # Noise seeded by the episode, so a re-recorded episode is the same episode.
    rng = np.random.default_rng([seed, task.index, 7])
    success_at: int | None = None
    for t in range(spec.max_episode_steps):
        action, procedure = expert.act(obs)
        for key in recording.obs:
            put(f"obs/{key}", obs[key])
        if recording.step_labels is not None:
            for key, value in recording.step_labels(env).items():
                put(key, value)
        put("action", action)
        if spec.action_noise > 0:
            # DART (Laskey et al. 2017): execute a perturbed action so the demonstrations visit
            # the states a learner drifts into, but keep the expert's own action as the label,
            # which shows how to come back.
            noise = rng.normal(0.0, spec.action_noise, action.shape)
            low, high = env.action_space.low, env.action_space.high
            action = np.clip(action + noise, low, high).astype(action.dtype)
            put("executed_action", action)
        for key, value in procedure.items():
            put(key, value)
        obs, reward, terminated, truncated, info = env.step(action)
        put("reward", reward)
        put("success", info["success"])
        if info["success"] and success_at is None:
            success_at = t
        if terminated or truncated:
            break
        if (
            success_at is not None
            and spec.steps_after_success is not None
            and t - success_at >= spec.steps_after_success
        ):
            break
    arrays = {k: np.stack(v) for k, v in steps.items()}
    if recording.episode_labels is not None:
        arrays.update(recording.episode_labels(arrays))
    meta = {
        "task": task.name,
        "instruction": task.instruction,
        "success": success_at is not None,
        "seed": seed,
        "source": "expert",
    }
    return arrays, meta


_ENVS: collections.OrderedDict[tuple, gym.Env] = collections.OrderedDict()
"""Envs of this process by (suite, task, env options), most recently used last."""
_KEEP_ENVS = 4


def _episode_env(plan: RecordPlan, task: Any) -> gym.Env:
    """An env for `task`, kept for the next episode of it: building one (compiling a Meta-World
    MuJoCo model) costs more than a whole expert episode (push: 0.12 s against 0.08 s for 100
    steps), and `reset(seed=...)` restores everything an episode depends on, so a reused env
    records the same episode as a new one (tested)."""
    obs = plan.recording.obs
    kwargs: dict[str, Any] = {"obs": obs, "max_episode_steps": plan.spec.max_episode_steps}
    if any(k.startswith("image/") for k in obs):  # envs without cameras take no image size
        kwargs["image_size"] = plan.spec.image_size
    key = (plan.suite_name, task.name, task.index, *sorted(kwargs.items()))
    env = _ENVS.pop(key, None)
    if env is None:
        env = plan.suite_type.build_env(task, plan.suite_name, kwargs)
    _ENVS[key] = env
    while len(_ENVS) > _KEEP_ENVS:
        _ENVS.popitem(last=False)[1].close()
    return env


def _close_envs() -> None:
    while _ENVS:
        _ENVS.popitem()[1].close()


def _job(args: tuple[RecordPlan, Any, int]) -> tuple[str, int, Any, Any]:
    plan, task, seed = args
    arrays, meta = rollout_expert(plan, task, seed)
    return task.name, seed, arrays, meta


def record_expert(
    suite: TaskSuite,
    out: str,
    *,
    episodes_per_task: int,
    obs: Sequence[str] | None = None,
    image_size: int = 84,
    max_episode_steps: int | None = None,
    steps_after_success: int | None = 10,
    only_success: bool = False,
    workers: int = 1,
    seed: int = 0,
    action_noise: float = 0.0,
    on_episode: Callable[[str, bool], None] | None = None,
) -> RecordSummary:
    """Record `episodes_per_task` expert episodes of every task of `suite` into `out`: episode
    seeds `seed`, `seed + 1`, ... of each task. `obs` and `max_episode_steps` default to the
    family's (`envs.defaults`).

    With `only_success`, failed episodes are dropped and further seeds are tried (up to three
    times the request) until each task has its count.
    """
    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be at least 1, got {episodes_per_task}")
    defaults = envs.defaults(suite.name)
    spec = RecordSpec(
        tuple(obs or defaults["obs"]),
        image_size,
        max_episode_steps or defaults["max_episode_steps"],
        steps_after_success,
        action_noise=action_noise,
    )
    plan = plan_recording(suite, spec)
    store = DemoStore.open_or_create(out, _schema(suite, plan))
    try:
        meta = store.episode_meta()
        have: dict[str, set[int]] = {t: set() for t in suite.task_names}
        for task, s in zip(meta["task"], meta["seed"], strict=True):
            have.setdefault(str(task), set()).add(int(s))
        recorded = discarded = 0
        skipped = sum(min(len(have[t]), episodes_per_task) for t in suite.task_names)
        next_seed = dict.fromkeys(suite.task_names, seed)
        max_seed = seed + (3 * episodes_per_task if only_success else episodes_per_task)
        while True:
            jobs = []
            for task in suite.tasks:
                missing = episodes_per_task - len(have[task.name])
                while missing > 0 and next_seed[task.name] < max_seed:
                    s = next_seed[task.name]
                    next_seed[task.name] += 1
                    if s in have[task.name]:
                        continue
                    jobs.append((plan, task, s))
                    missing -= 1
            if not jobs:
                break
            for name, s, arrays, episode_meta in _run(jobs, workers):
                if only_success and not episode_meta["success"]:
                    discarded += 1
                else:
                    store.add_episode(arrays, **episode_meta)
                    have[name].add(s)
                    recorded += 1
                if on_episode is not None:
                    on_episode(name, bool(episode_meta["success"]))
            if not only_success:
                break
        return RecordSummary(recorded, skipped, discarded, store.num_episodes)
    finally:
        store.close()


def _ignore_sigint() -> None:
    # Ctrl-C is the parent's to handle: it stops committing and closes the store cleanly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run(jobs: list, workers: int) -> Iterator[tuple[str, int, Any, Any]]:
    """Episodes in job order, computed by `workers` spawned processes."""
    if workers <= 1:
        try:
            for job in jobs:
                yield _job(job)
        finally:
            _close_envs()
        return
    with mp.get_context("spawn").Pool(workers, initializer=_ignore_sigint) as pool:
        yield from pool.imap(_job, jobs)
