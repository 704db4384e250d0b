"""Recording demonstrations from the scripted experts into a DemoStore, for every env family.

Episodes are rolled out in spawned worker processes (one per core) and committed by the parent
in a fixed order, one at a time, so the store is the same whatever the number of workers, and a
`kill -9` at any moment loses at most the episode being written. Re-running the same command
resumes: episodes whose (task, seed) is already in the store are skipped, and the store it ends
with is byte for byte the one an uninterrupted run writes.

Each episode stores its variation (Meta-World: which object and goal positions) and the
benchmark seed its variations come from. Where a task's variations are a fixed list that seeds
take in turn (seed s plays variation s mod n), an episode dropped by `only_success` is replaced
by the next variation no episode of the task has played, never by one played already.

What a step stores comes from the suite's env family (`envs.family_of(suite.name).recording`),
so that one recording serves every method of il: the observation, the action, reward and success,
the expert's procedure, and the family's own labels — for Meta-World the expert's positions,
phase and target, a language-motion label and the full MuJoCo state; for a maze the BFS maps.
This module knows no family by name.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing as mp
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

import envs
from envs.family import Recording, RecordSpec
from envs.suite import TaskSuite
from il.data.motion_labels import episode_labeller
from il.data.store import DemoStore, KeySpec, StoreError, StoreSchema

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
    task_seed: int = 0
    """The benchmark seed of the suite's variations (the tasks carry the variations)."""


@dataclass
class RecordSummary:
    recorded: int
    skipped: int
    discarded: int
    episodes_in_store: int
    short: list[str] = field(default_factory=list)
    """One line per task left with fewer episodes than asked: every variation it has was
    tried (or, where seeds draw variations at random, every seed allowed)."""


def plan_recording(suite: TaskSuite, spec: RecordSpec) -> RecordPlan:
    """What recording `spec` in `suite` stores, as its family says (a one-line `ValueError`
    for a request the family cannot record)."""
    if spec.action_noise < 0:
        raise ValueError(f"action noise must be 0 or more, not {spec.action_noise}")
    family = envs.family_of(suite.name)
    recording = family.recording(suite, spec)
    return RecordPlan(family.name, type(suite), suite.name, spec, recording, suite.task_seed)


def expert_schema(suite: TaskSuite, spec: RecordSpec) -> StoreSchema:
    """The store schema for expert recordings of `suite`."""
    return _schema(suite, plan_recording(suite, spec))


def _schema(suite: TaskSuite, plan: RecordPlan) -> StoreSchema:
    family = envs.family_of(plan.family)
    keys = {
        key: KeySpec(k.shape, k.dtype, k.description, k.chunk_steps)
        for key, k in plan.recording.keys.items()
    }
    counts = {t.name: suite.variation_count(t) for t in suite.tasks}
    source = {
        "env": family.name,
        "suite": suite.name,
        "split": suite.split,
        "tasks": list(suite.task_names),
        "task_seed": suite.task_seed,
        "variations": {name: n for name, n in counts.items() if n is not None},
        **plan.recording.source,
    }
    # a store without actions (a human-proxy recording) states no action convention
    action = dict(family.action_convention) if "action" in keys else {}
    return StoreSchema(keys=keys, fps=family.fps, action=action, source=source)


def rollout_expert(plan: RecordPlan, task: Any, seed: int) -> tuple[dict[str, np.ndarray], Any]:
    """One expert episode of `task` (a task of the plan's suite) as per-step arrays plus its
    episode metadata."""
    spec, recording = plan.spec, plan.recording
    env = _episode_env(plan, task)
    expert = envs.family_of(plan.family).expert(task)
    obs, reset_info = env.reset(seed=seed)
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
    if recording.finish is not None:
        arrays = recording.finish(env, arrays, seed)
    meta = {
        "task": task.name,
        "instruction": task.instruction,
        "success": success_at is not None,
        "seed": seed,
        "source": recording.episode_source,
        "variation": int(reset_info.get("variation", -1)),
        "task_seed": plan.task_seed,
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
    key = (plan.suite_name, plan.task_seed, task.name, task.index, *sorted(kwargs.items()))
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


def _stored_track_cameras(out: str) -> tuple[str, ...] | None:
    """The cameras the store at `out` records tracks in, () for a store recorded without
    tracks, None where there is no store yet: recording resumes with the keys it has."""
    from envs.tracks import TRACKS_ATTR

    try:
        store = DemoStore.open(out)
    except StoreError:
        return None  # none there yet (a damaged one is refused when it is opened to write)
    tracks = store.schema.source.get(TRACKS_ATTR)
    if not isinstance(tracks, dict):
        return ()
    return tuple(str(name) for name in tracks.get("cameras", {}))


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
    track_cameras: Sequence[str] | None = None,
    human_proxy: Any = None,
    on_episode: Callable[[str, bool], None] | None = None,
) -> RecordSummary:
    """Record `episodes_per_task` expert episodes of every task of `suite` into `out`: episode
    seeds `seed`, `seed + 1`, ... of each task, on the variations of `suite.task_seed`. `obs`
    and `max_episode_steps` default to the family's (`envs.defaults`).

    With `only_success`, failed episodes are dropped and further seeds are tried until each
    task has its count: for a task whose seeds take its n variations in turn, the seeds up to
    `seed + n - 1`, so that no variation is played twice (the summary names a task that runs
    out); otherwise up to three times the request.

    `track_cameras`: the two cameras to record motion tracks in (`envs.tracks`); None: the
    family's pair, or, resuming, the store's (none for a store recorded without them).
    `human_proxy`: `envs.human_proxy.HumanProxy` settings to store each episode as a video of
    a person would show it (source `human`) rather than as the expert's recording.
    """
    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be at least 1, got {episodes_per_task}")
    defaults = envs.defaults(suite.name)
    if human_proxy is not None and not envs.family_of(suite.name).track_cameras:
        raise ValueError(f"{suite.name} has no gripper for a human-proxy video to show")
    if track_cameras is None:
        track_cameras = _stored_track_cameras(out)
    elif track_cameras and not envs.family_of(suite.name).track_cameras:
        raise ValueError(
            f"{suite.name} has no gripper to record motion tracks of; leave out --tracks"
        )
    spec = RecordSpec(
        tuple(obs or defaults["obs"]),
        image_size,
        max_episode_steps or defaults["max_episode_steps"],
        steps_after_success,
        action_noise=action_noise,
        track_cameras=None if track_cameras is None else tuple(track_cameras),
        human_proxy=human_proxy,
    )
    plan = plan_recording(suite, spec)
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(DemoStore.open_or_create(out, _schema(suite, plan)))
        _check_task_seed(store, suite.task_seed, out)
        # labelled as the store says: a store labelled again since keeps one labelling
        label = episode_labeller(store.schema)
        meta = store.episode_meta()
        stored: dict[str, set[int]] = {t: set() for t in suite.task_names}
        for task, s in zip(meta["task"], meta["seed"], strict=True):
            stored.setdefault(str(task), set()).add(int(s))
        queues = {
            t.name: _Attempts(
                t.name,
                _candidate_seeds(suite, t, seed, episodes_per_task, only_success),
                stored[t.name],
            )
            for t in suite.tasks
        }
        skipped = sum(min(len(stored[t]), episodes_per_task) for t in suite.task_names)
        recorded = discarded = 0
        # Rounds, as an uninterrupted run has them: each task takes as many of its next seeds
        # as it lacks episodes. A seed already in the store counts as the success it was, so a
        # resumed run plans the rounds the interrupted one did and appends exactly what that
        # one would have appended after the point it stopped.
        rollouts = stack.enter_context(_Rollouts(workers))
        while True:
            jobs = []
            planned = False
            for task in suite.tasks:
                queue = queues[task.name]
                before = queue.tried
                jobs += [(plan, task, s) for s in queue.take(episodes_per_task)]
                planned = planned or queue.tried > before
            if not planned:
                break
            for name, _, arrays, episode_meta in rollouts(jobs):
                if only_success and not episode_meta["success"]:
                    discarded += 1
                    queues[name].failed += 1
                else:
                    store.add_episode(label(arrays) if label else arrays, **episode_meta)
                    queues[name].kept += 1
                    recorded += 1
                if on_episode is not None:
                    on_episode(name, bool(episode_meta["success"]))
            if not only_success:
                break
        short = [
            queues[t.name].shortfall(episodes_per_task, suite.variation_count(t))
            for t in suite.tasks
            if queues[t.name].kept < episodes_per_task
        ]
        return RecordSummary(recorded, skipped, discarded, store.num_episodes, short)


def _candidate_seeds(
    suite: TaskSuite, task: Any, seed: int, episodes: int, only_success: bool
) -> list[int]:
    """The seeds a task's episodes are tried with, in order. Without `only_success` every
    episode is kept, so `episodes` seeds. With it, failed ones are replaced by the following
    seeds: where seeds take a task's n variations in turn, the n seeds from `seed` play each
    variation once, and a replacement beyond them would replay one; elsewhere up to three
    times the request."""
    if not only_success:
        return list(range(seed, seed + episodes))
    variations = suite.variation_count(task)
    return list(range(seed, seed + (variations if variations else 3 * episodes)))


@dataclass
class _Attempts:
    """One task's seeds in the order they are tried, and its episodes kept so far."""

    task: str
    seeds: list[int]
    stored: set[int]
    """Seeds of the task's episodes already in the store."""
    kept: int = 0
    tried: int = 0
    failed: int = 0

    def __post_init__(self) -> None:
        # episodes of seeds this recording would not try (another --seed) count all the same
        self.kept = len(self.stored - set(self.seeds))

    def take(self, wanted: int) -> list[int]:
        """Seeds to roll out this round: the next ones, as many as the task lacks episodes.
        One the store holds counts as kept at once, as it was when it was recorded."""
        jobs: list[int] = []
        lacking = wanted - self.kept
        while lacking > 0 and self.tried < len(self.seeds):
            s = self.seeds[self.tried]
            self.tried += 1
            lacking -= 1
            if s in self.stored:
                self.kept += 1
            else:
                jobs.append(s)
        return jobs

    def shortfall(self, wanted: int, variations: int | None) -> str:
        """The line that says why this task has fewer episodes than asked."""
        have = f"{self.task} has {self.kept} of {wanted} episodes"
        if variations is not None and len(self.seeds) >= variations:
            fix = f"ask for at most {self.kept}" if self.kept else "give the episodes more steps"
            return (
                f"{have}: no unused variation left (all {variations} tried, the expert failed "
                f"on {self.failed}); {fix}, or drop --only-success"
            )
        return f"{have}: the expert failed on {self.failed} of the {len(self.seeds)} seeds tried"


def _check_task_seed(store: DemoStore, task_seed: int, out: str) -> None:
    """One store, one benchmark seed: a resumed recording must draw the variations its
    episodes came from (a store from before task seeds were stored was recorded with 0)."""
    recorded = int(store.schema.source.get("task_seed", 0))
    if recorded != task_seed:
        raise StoreError(
            f"{out} holds variations of task seed {recorded}; record task seed {task_seed} "
            f"into a new store, or resume this one with task seed {recorded}"
        )


def _ignore_sigint() -> None:
    # Ctrl-C is the parent's to handle: it stops committing and closes the store cleanly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Rollouts:
    """Episodes computed in job order, in this process or in `workers` spawned ones, for every
    round of one recording: starting a worker pool, or building an env, costs more than an
    episode, so both are kept from one round to the next and closed at the end. The pool
    starts with the first episode to roll out (a store already complete needs none)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: Any = None

    def __enter__(self) -> _Rollouts:
        return self

    def __call__(self, jobs: list) -> Iterator[tuple[str, int, Any, Any]]:
        if self.workers <= 1 or not jobs:
            return map(_job, jobs)
        if self._pool is None:
            self._pool = mp.get_context("spawn").Pool(self.workers, initializer=_ignore_sigint)
        return self._pool.imap(_job, jobs)

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
        _close_envs()
