"""Recording demonstrations from the scripted experts into a DemoStore.

Episodes are rolled out in spawned worker processes (one per core) and committed by the parent
in a fixed order, one at a time, so the store is the same whatever the number of workers, and a
`kill -9` at any moment loses at most the episode being written. Re-running the same command
resumes: episodes whose (task, seed) is already in the store are skipped.

Every step stores what any method of il may need later, so one recording serves them all: the
observation, the action, reward and success, the expert's procedure (positions it parsed, its
phase, target and grab effort), a language-motion label, and the full MuJoCo state.
"""

from __future__ import annotations

import collections
import dataclasses
import multiprocessing as mp
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import metaworld
import mujoco
import numpy as np

import envs
from envs import Suite, SuiteTask
from envs.experts import ScriptedExpert
from envs.language_motion import VOCABULARY, label_episode
from il.data.store import DemoStore, KeySpec, StoreSchema

__all__ = ["RecordSummary", "expert_schema", "record_expert"]

ACTION_CONVENTION = {
    "type": "delta",
    "frame": "world",
    "dims": ["dx", "dy", "dz", "grab"],
    "units": "dx, dy, dz in [-1, 1]: hand displacement of 1 cm per unit per step",
    "gripper": "grab effort in [-1, 1]; +1 closes, -1 opens",
}
PROCEDURE_KEYS = {
    "procedure/hand": ((3,), "float32", "hand position the expert parsed from the state (m)"),
    "procedure/object": ((3,), "float32", "main object position the expert parsed (m)"),
    "procedure/goal": ((3,), "float32", "goal position (m)"),
    "procedure/phase": ((), "int16", "index of the expert's phase; names in attrs phases[task]"),
    "procedure/target": ((3,), "float32", "position the expert moves the hand toward (m)"),
    "procedure/grab_effort": ((), "float32", "the expert's grab effort"),
}


@dataclass(frozen=True)
class RecordSpec:
    """What to record per step; shared by the schema and the workers."""

    obs: tuple[str, ...]
    image_size: int
    max_episode_steps: int
    steps_after_success: int | None
    """Steps kept after the first success; None records the full episode."""
    sim_state_size: int = 0
    """Length of the stored sim state: the largest over the suite's tasks."""
    action_noise: float = 0.0
    """Standard deviation of Gaussian noise added to the executed action (0: none)."""


def expert_schema(suite: Suite, spec: RecordSpec) -> StoreSchema:
    """The store schema for expert recordings of `suite`."""
    sim_state_sizes = {}
    for name in suite.task_names:
        probe = suite.make(name, obs=("state",))
        sim_state_sizes[name] = probe.sim_state_size
        probe.close()
    state_size = max(sim_state_sizes.values())
    keys: dict[str, KeySpec] = {}
    for key in spec.obs:
        if key == "state":
            keys["obs/state"] = KeySpec((39,), "float32", "Meta-World state (hand, gripper, ...)")
        elif key == "proprio":
            keys["obs/proprio"] = KeySpec((4,), "float32", "hand position (m) and gripper opening")
        else:
            camera = key.split("/", 1)[1]
            keys[f"obs/{key}"] = KeySpec(
                (spec.image_size, spec.image_size, 3), "uint8", f"RGB from camera {camera}"
            )
    if spec.action_noise > 0:
        keys["action"] = KeySpec(
            (4,), "float32", "expert action, clipped to [-1, 1]: the label to imitate"
        )
        keys["executed_action"] = KeySpec(
            (4,),
            "float32",
            f"action the env executed: the expert's plus Gaussian noise (std "
            f"{spec.action_noise:g}), clipped to [-1, 1]",
        )
    else:
        keys["action"] = KeySpec(
            (4,), "float32", "expert action as executed, clipped to [-1, 1] (see attrs action)"
        )
    keys["reward"] = KeySpec((), "float32", "Meta-World v3 dense reward after the action")
    keys["success"] = KeySpec((), "bool", "task solved after the action")
    for key, (shape, dtype, text) in PROCEDURE_KEYS.items():
        keys[key] = KeySpec(shape, dtype, text)
    keys["language_motion"] = KeySpec(
        (), "int16", "index into attrs source.language_motion_vocabulary"
    )
    keys["sim_state"] = KeySpec(
        (state_size,),
        "float64",
        "MuJoCo integration state before the action; tasks with a smaller state fill the tail "
        "with NaN (sizes in attrs source.sim_state_sizes)",
    )
    phases = {t.name: list(ScriptedExpert(t.name).phases) for t in suite.tasks}
    source = {
        "env": "metaworld",
        "suite": suite.name,
        "split": suite.split,
        "tasks": list(suite.task_names),
        "image_size": spec.image_size,
        "max_episode_steps": spec.max_episode_steps,
        "steps_after_success": spec.steps_after_success,
        "action_noise": spec.action_noise,
        "metaworld_version": metaworld.__dict__.get("__version__", _dist_version("metaworld")),
        "mujoco_version": mujoco.__version__,
        "phases": phases,
        "sim_state_sizes": sim_state_sizes,
        "language_motion_vocabulary": list(VOCABULARY),
    }
    return StoreSchema(keys=keys, fps=80.0, action=dict(ACTION_CONVENTION), source=source)


def _padded(state: np.ndarray, size: int) -> np.ndarray:
    """A task's sim state in the suite-wide length, NaN after its own end (`set_sim_state`
    drops the NaN tail)."""
    out = np.full(max(size, len(state)), np.nan)
    out[: len(state)] = state
    return out


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def rollout_expert(
    task: SuiteTask, seed: int, spec: RecordSpec, suite_name: str | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """One expert episode as per-step arrays plus its episode metadata."""
    env = _episode_env(task, spec, suite_name)
    expert = ScriptedExpert(task.name)
    obs, _ = env.reset(seed=seed)
    steps: dict[str, list[np.ndarray]] = {}

    def put(key: str, value: Any) -> None:
        steps.setdefault(key, []).append(np.asarray(value))

    # Noise seeded by the episode, so a re-recorded episode is the same episode.
    rng = np.random.default_rng([seed, task.index, 7])
    success_at: int | None = None
    for t in range(spec.max_episode_steps):
        command, procedure = expert.act(obs["state"])
        # The action as executed: the experts' gains overshoot the action space (commands up to
        # ±12), which the env clips; storing the command would make min-max normalization
        # squeeze every executable action into a tenth of the network's range.
        action = np.clip(command, env.action_space.low, env.action_space.high).astype(np.float32)
        for key in spec.obs:
            put(f"obs/{key}", obs[key])
        put("sim_state", _padded(env.get_sim_state(), spec.sim_state_size))
        put("action", action)
        if spec.action_noise > 0:
            # DART (Laskey et al. 2017): execute a perturbed action so the demonstrations visit
            # the states a learner drifts into, but keep the expert's own action as the label,
            # which shows how to come back.
            noise = rng.normal(0.0, spec.action_noise, action.shape)
            action = np.clip(action + noise, env.action_space.low, env.action_space.high)
            action = action.astype(np.float32)
            put("executed_action", action)
        for name, value in procedure.as_arrays().items():
            put(f"procedure/{name}", value)
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
    hand = arrays["procedure/hand"]
    opening = arrays["obs/state"][:, 3] if "obs/state" in arrays else None
    if opening is None:
        raise ValueError("recording needs the 'state' observation")
    labels = label_episode(hand, opening)
    index = {phrase: i for i, phrase in enumerate(VOCABULARY)}
    arrays["language_motion"] = np.array([index[p] for p in labels], dtype=np.int16)
    meta = {
        "task": task.name,
        "instruction": task.instruction,
        "success": success_at is not None,
        "seed": seed,
        "source": "expert",
    }
    return arrays, meta


@dataclass
class RecordSummary:
    recorded: int
    skipped: int
    discarded: int
    episodes_in_store: int


_ENVS: collections.OrderedDict[tuple, envs.MetaWorldEnv] = collections.OrderedDict()
"""Envs of this process by (task, observation spec, suite), most recently used last."""
_KEEP_ENVS = 4


def _episode_env(task: SuiteTask, spec: RecordSpec, suite_name: str | None) -> envs.MetaWorldEnv:
    """An env for `task`, kept for the next episode of it: building one (compiling the MuJoCo
    model) costs more than a whole expert episode (push: 0.12 s against 0.08 s for 100
    steps), and `reset(seed=...)` restores everything an episode depends on, so a reused env
    records the same episode as a new one (tested)."""
    obs = ("state", *[k for k in spec.obs if k != "state"])
    key = (task.name, task.index, obs, spec.image_size, spec.max_episode_steps, suite_name)
    env = _ENVS.pop(key, None)
    if env is None:
        env = envs.MetaWorldEnv(
            task.name,
            task.variations,
            obs=obs,
            image_size=spec.image_size,
            max_episode_steps=spec.max_episode_steps,
            task_index=task.index,
            suite=suite_name,
        )
    _ENVS[key] = env
    while len(_ENVS) > _KEEP_ENVS:
        _ENVS.popitem(last=False)[1].close()
    return env


def _close_envs() -> None:
    while _ENVS:
        _ENVS.popitem()[1].close()


def _job(args: tuple[SuiteTask, int, RecordSpec, str]) -> tuple[str, int, Any, Any]:
    task, seed, spec, suite_name = args
    arrays, meta = rollout_expert(task, seed, spec, suite_name)
    return task.name, seed, arrays, meta


def record_expert(
    suite: Suite,
    out: str,
    *,
    episodes_per_task: int,
    obs: Sequence[str] = ("state",),
    image_size: int = 84,
    max_episode_steps: int = 500,
    steps_after_success: int | None = 10,
    only_success: bool = False,
    workers: int = 1,
    seed: int = 0,
    action_noise: float = 0.0,
    on_episode: Callable[[str, bool], None] | None = None,
) -> RecordSummary:
    """Record `episodes_per_task` expert episodes of every task of `suite` into `out`.

    With `only_success`, failed episodes are dropped and further seeds are tried (up to three
    times the request) until each task has its count.
    """
    obs = tuple(obs)
    if "state" not in obs:
        obs = ("state", *obs)
    if action_noise < 0:
        raise ValueError(f"action noise must be 0 or more, not {action_noise}")
    spec = RecordSpec(
        obs, image_size, max_episode_steps, steps_after_success, action_noise=action_noise
    )
    schema = expert_schema(suite, spec)
    spec = dataclasses.replace(spec, sim_state_size=schema.keys["sim_state"].shape[0])
    store = DemoStore.open_or_create(out, schema)
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
                    jobs.append((task, s, spec, suite.name))
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
