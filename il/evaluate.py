"""Evaluation: roll policies out on a suite of tasks, in parallel, with fixed seeds.

Work is split into jobs, each a block of consecutive episodes of one task, about sixteen per
worker; spawned worker processes take them from a queue as they finish, so a long task does not
leave a worker idle at the end, and one task alone still spreads over every worker. A worker keeps
its envs and policies from one job to the next. Episode `k` of every task is reset with seed
`seed + k`, which fixes its variation and seeds a stochastic policy: two runs of the same
command produce the same table, whatever the number of workers.

Nothing here knows an env family: the suite builds the envs, and the family's description
(`envs.family_of`) gives the default observation keys, episode length and filming options.

A hierarchical policy (`il.policies.hierarchy.IntermediateOutput`) says in a few words what each
action was read from — RT-H's language motion, procedure cloning's phase and target — and the
videos show it on every frame, a correction in another colour with a "corrected:" prefix, so a
person reviewing a rollout sees what the policy meant to do beside what it did.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import math
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

import envs
from envs.suite import TaskSuite

__all__ = [
    "EpisodeResult",
    "EvalReport",
    "Policy",
    "TaskResult",
    "caption_frame",
    "evaluate",
    "intermediate_caption",
]


class Policy(Protocol):
    """What evaluation needs of a policy: one instance per environment."""

    def reset(self, seed: int | None = None) -> None:
        """A new episode; `seed` (the episode's) seeds a stochastic policy's sampling."""

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray: ...


PolicyFactory = Callable[[Any], Policy]
"""Builds the policy for one task of a suite (picklable: it is sent to worker processes)."""


@dataclass
class EpisodeResult:
    task: str
    episode: int
    seed: int
    variation: int
    success: bool
    length: int
    """Steps taken; the episode ends at the first success."""
    interventions: int = 0
    """Steps an intervener (`il.interventions`) chose instead of the policy."""


@dataclass
class TaskResult:
    task: str
    episodes: list[EpisodeResult] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return float(np.mean([e.success for e in self.episodes])) if self.episodes else 0.0

    @property
    def mean_length(self) -> float:
        return float(np.mean([e.length for e in self.episodes])) if self.episodes else 0.0

    @property
    def interventions(self) -> int:
        return sum(e.interventions for e in self.episodes)


@dataclass
class EvalReport:
    suite: str
    policy: str
    tasks: list[TaskResult]
    seconds: float
    steps: int
    videos: list[str] = field(default_factory=list)
    task_seed: int = 0
    """The benchmark seed that drew the tasks' variations (`TaskSuite.task_seed`)."""

    @property
    def success_rate(self) -> float:
        """Mean over tasks of the per-task success rate (each task weighs the same)."""
        return float(np.mean([t.success_rate for t in self.tasks])) if self.tasks else 0.0

    def variations(self) -> str | None:
        """The variations evaluated, for a person: `0-9` when every task played the same ones,
        else None (the JSON lists each task's)."""
        played = {tuple(e.variation for e in t.episodes) for t in self.tasks}
        if len(played) != 1:
            return None
        return _ranges(next(iter(played)))

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0

    @property
    def interventions(self) -> int:
        """Steps chosen by the intervener, over every episode."""
        return sum(t.interventions for t in self.tasks)

    def to_json(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "policy": self.policy,
            "task_seed": self.task_seed,
            "success_rate": self.success_rate,
            "seconds": self.seconds,
            "steps": self.steps,
            "steps_per_second": self.steps_per_second,
            "interventions": self.interventions,
            "videos": self.videos,
            "tasks": {
                t.task: {
                    "success_rate": t.success_rate,
                    "mean_length": t.mean_length,
                    "interventions": t.interventions,
                    "variations": [e.variation for e in t.episodes],
                    "episodes": [asdict(e) for e in t.episodes],
                }
                for t in self.tasks
            },
        }

    def write_json(self, path: str | os.PathLike) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2))


def _ranges(numbers: Sequence[int]) -> str:
    """`0, 1, 2, 5, 49, 0` → `0-2, 5, 49, 0`: runs of consecutive numbers, in the order played."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


@dataclass(frozen=True)
class _Job:
    """A block of consecutive episodes of one task: the unit a worker takes from the queue."""

    suite: str
    suite_type: type[TaskSuite]
    """The suite's class (Meta-World `Suite`, `MazeSuite`, ...): it builds the job's env."""
    task: Any
    episodes: tuple[int, ...]
    """Episode numbers; episode k is reset with seed `seed + k`."""
    seed: int
    env_kwargs: dict[str, Any]
    video_kwargs: dict[str, Any]
    """Env keyword arguments for filming, besides the render mode and size (the family's)."""
    policy_factory: PolicyFactory
    video_dir: str | None
    video_episodes: int
    video_size: int
    intervener: Any = None
    """A picklable `il.interventions.Interveners`, or None: the policy chooses every step."""
    recording: bool = False
    """Return every episode's steps, for the parent to commit to a store."""


class _Kept:
    """A process's envs and policies, kept from one job to the next: building a Meta-World env
    costs more than a short episode, and a learned policy loads its checkpoint once."""

    def __init__(self) -> None:
        self.envs: dict[tuple[str, bool], Any] = {}
        self.policies: dict[str, Policy] = {}
        self.factory: PolicyFactory | None = None
        self.interveners: dict[str, Any] = {}

    def env(self, job: _Job, filming: bool) -> Any:
        key = (job.task.name, filming)
        if key not in self.envs:
            kwargs = dict(job.env_kwargs)
            if filming:
                kwargs.update(job.video_kwargs)
                kwargs.update(render_mode="rgb_array", render_size=job.video_size)
            suite = job.suite_type(job.suite, "train", (job.task,))
            self.envs[key] = suite.env_fns(1, **kwargs)[0]()
        return self.envs[key]

    def policy(self, job: _Job) -> Policy:
        # Every job of an evaluation carries the same factory; the first one's copy is kept, so
        # a factory that loads a checkpoint once (CheckpointPolicies) loads it once per process.
        self.factory = self.factory or job.policy_factory
        if job.task.name not in self.policies:
            self.policies[job.task.name] = self.factory(job.task)
        return self.policies[job.task.name]

    def intervener(self, job: _Job) -> Any:
        if job.intervener is None:
            return None
        if job.task.name not in self.interveners:
            self.interveners[job.task.name] = job.intervener(job.task)
        return self.interveners[job.task.name]

    def close(self) -> None:
        for env in self.envs.values():
            env.close()
        self.envs.clear()
        self.policies.clear()
        self.interveners.clear()
        self.factory = None


_kept = _Kept()
"""A worker process's envs and policies: a pool serves one evaluation and ends with it."""


Recorded = tuple[dict[str, np.ndarray], dict[str, Any]]
"""One episode's per-step arrays and its episode metadata, for `DemoStore.add_episode`."""
_JobOutput = tuple[list[EpisodeResult], int, list[str], list[Recorded]]


def _run_job(job: _Job, kept: _Kept | None = None) -> _JobOutput:
    """Run the job's episodes one after the other in the process's env of its task."""
    kept = kept or _kept
    policy = kept.policy(job)
    intervener = kept.intervener(job)
    results: list[EpisodeResult] = []
    videos: list[str] = []
    recorded: list[Recorded] = []
    total_steps = 0
    for episode in job.episodes:
        seed = job.seed + episode
        filming = job.video_dir is not None and episode < job.video_episodes
        env = kept.env(job, filming)
        obs, _ = env.reset(seed=seed)
        policy.reset(seed=seed)
        if intervener is not None:
            intervener.begin(env, seed)
        frames = [env.render()] if filming else []
        steps: dict[str, list[np.ndarray]] = {}
        length, interventions, done = 0, 0, False
        while not done:
            if intervener is None:
                action, chosen = policy.act(obs), {}
            else:
                action, chosen = intervener.act(policy, env, obs)
                interventions += bool(chosen["intervention"])
            if job.recording:
                for key, value in [*obs.items(), ("action", np.asarray(action, np.float32))]:
                    name = key if key == "action" else f"obs/{key}"
                    steps.setdefault(name, []).append(np.asarray(value))
                for key, value in chosen.items():
                    steps.setdefault(key, []).append(np.asarray(value))
            obs, reward, terminated, truncated, info = env.step(action)
            if job.recording:
                steps.setdefault("reward", []).append(np.float32(reward))
                steps.setdefault("success", []).append(np.bool_(info["success"]))
            length += 1
            if filming:
                frames.append(caption_frame(env.render(), intermediate_caption(policy)))
            done = terminated or truncated or info["success"]
        total_steps += length
        result = EpisodeResult(
            task=job.task.name,
            episode=episode,
            seed=seed,
            variation=int(env.variation),
            success=bool(info["success"]),
            length=length,
            interventions=interventions,
        )
        results.append(result)
        if job.recording:
            meta = {
                "task": job.task.name,
                "instruction": job.task.instruction,
                "success": result.success,
                "seed": seed,
                "source": "intervention" if interventions else "policy",
                "variation": result.variation,
            }
            recorded.append(({k: np.stack(v) for k, v in steps.items()}, meta))
        if filming:
            videos.append(_write_video(job.video_dir, job.task.name, episode, frames))
    return results, total_steps, videos, recorded


def intermediate_caption(policy: Any) -> tuple[str, bool] | None:
    """What the policy's last action was read from, in a few words, and whether it was a
    correction; None for a policy without an intermediate output (or before its first action)."""
    from il.policies.hierarchy import IntermediateOutput

    inner = policy.policy if isinstance(policy, _TaskBound) else policy
    if not isinstance(inner, IntermediateOutput) or inner.intermediate is None:
        return None
    return inner.intermediate_text(), inner.intermediate_overridden


PREDICTED_COLOUR = (255, 255, 255)
CORRECTED_COLOUR = (255, 176, 0)


def caption_frame(frame: np.ndarray, caption: tuple[str, bool] | None) -> np.ndarray:
    """`frame` (h w 3, uint8) with `caption`'s text on a dark band along its bottom edge: white
    for the policy's own prediction, amber and prefixed "corrected:" for an override. The font
    shrinks until the line fits the frame's width."""
    if caption is None:
        return frame
    from PIL import Image, ImageDraw, ImageFont

    words, corrected = caption
    line = f"corrected: {words}" if corrected else words
    image = Image.fromarray(np.ascontiguousarray(frame))
    width, height = image.size
    margin = max(2, height // 60)
    size = max(8, height // 16)
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(image)
    while size > 8 and draw.textlength(line, font=font) > width - 2 * margin:
        size -= 1
        font = ImageFont.load_default(size=size)
    band = size + 2 * margin
    shaded = np.asarray(image).copy()
    shaded[height - band :] = shaded[height - band :] // 4  # darken: text reads on any scene
    image = Image.fromarray(shaded)
    draw = ImageDraw.Draw(image)
    colour = CORRECTED_COLOUR if corrected else PREDICTED_COLOUR
    draw.text((margin, height - band + margin), line, fill=colour, font=font)
    return np.asarray(image)


def _write_video(video_dir: str | None, task: str, episode: int, frames: list[np.ndarray]) -> str:
    import imageio.v3 as iio

    assert video_dir is not None
    path = Path(video_dir) / f"{task}_ep{episode:03d}.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.stack(frames), fps=30, codec="libx264", macro_block_size=1)
    return str(path)


def _episode_blocks(n_tasks: int, episodes_per_task: int, workers: int) -> list[range]:
    """Split each task's episodes into blocks so that every worker gets about 16 of them:
    workers take blocks from a queue as they finish, so one long task cannot leave the others
    idle at the end, and a single task still spreads over every worker."""
    per_task = max(1, math.ceil(16 * workers / n_tasks)) if workers > 1 else 1
    size = max(1, math.ceil(episodes_per_task / per_task))
    return [range(k, min(k + size, episodes_per_task)) for k in range(0, episodes_per_task, size)]


def evaluate(
    suite: TaskSuite | str,
    policy_factory: PolicyFactory,
    *,
    policy_name: str = "policy",
    episodes_per_task: int = 10,
    workers: int = 1,
    seed: int = 0,
    obs: Sequence[str] | None = None,
    image_size: int = 84,
    max_episode_steps: int | None = None,
    video_dir: str | os.PathLike | None = None,
    video_episodes: int = 1,
    video_size: int = 224,
    on_episode: Callable[[], None] | None = None,
    intervener: Any = None,
    record: tuple[str | os.PathLike, Any] | None = None,
) -> EvalReport:
    """Success per task over `episodes_per_task` seeded episodes, with `workers` processes.
    The result does not depend on `workers`: an episode's seed fixes its variation and seeds the
    policy's sampling, whichever process runs it. `obs` and `max_episode_steps` default to the
    family's (`envs.defaults`).

    `intervener` (`il.interventions.Interveners`): a simulated person who may choose some steps
    instead of the policy; each episode counts the steps it chose. `record` (a store path and
    its `StoreSchema`, see `il.interventions.rollout_schema`): commit every episode there as it
    finishes, so an interrupted evaluation keeps what it rolled out; run again, it plays only
    the episodes the store lacks and reports those it holds from the store."""
    if isinstance(suite, str):
        suite = envs.suite(suite)
    family = envs.family_of(suite.name)
    obs = tuple(obs or family.obs_keys)
    if episodes_per_task <= 0:
        raise ValueError(f"episodes_per_task must be positive, got {episodes_per_task}")
    if workers <= 0:
        raise ValueError(f"workers must be positive, got {workers}")
    env_kwargs = {
        "obs": tuple(obs),
        "max_episode_steps": max_episode_steps or family.max_episode_steps,
        "terminate_on_success": True,
    }
    if any(k.startswith("image/") for k in obs):  # envs without cameras take no image size
        env_kwargs["image_size"] = image_size
    report = on_episode or (lambda: None)
    with contextlib.ExitStack() as stack:
        store, held = None, {}
        if record is not None:
            from il.data.store import DemoStore

            store = stack.enter_context(DemoStore.open_or_create(*record))
            held = _held_episodes(store, seed)
        blocks = _episode_blocks(len(suite.tasks), episodes_per_task, workers)
        jobs = [
            _Job(
                suite.name,
                type(suite),
                task,
                episodes,
                seed,
                env_kwargs,
                dict(family.video_options),
                policy_factory,
                None if video_dir is None else str(video_dir),
                video_episodes,
                video_size,
                intervener,
                store is not None,
            )
            for block in blocks  # block-major: every task is under way early, for progress
            for task in suite.tasks
            if (episodes := tuple(k for k in block if (task.name, k) not in held))
        ]
        for _ in held:
            report()

        def commit(output: _JobOutput) -> None:
            if store is not None:
                for arrays, meta in output[3]:
                    store.add_episode(arrays, **meta, task_seed=suite.task_seed)

        start = time.perf_counter()
        outputs: list[_JobOutput] = []
        if workers == 1:
            kept = _Kept()
            try:
                for job in jobs:
                    outputs.append(_run_job(job, kept))
                    commit(outputs[-1])
                    for _ in job.episodes:
                        report()
            finally:
                kept.close()
        else:
            ctx = mp.get_context("spawn")
            with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                futures = {pool.submit(_run_job, job): job for job in jobs}
                for future in cf.as_completed(futures):
                    outputs.append(future.result())
                    commit(outputs[-1])
                    for _ in futures[future].episodes:
                        report()
        seconds = time.perf_counter() - start
    by_task = {t.name: TaskResult(t.name) for t in suite.tasks}
    steps = 0
    videos: list[str] = []
    for (task, _), result in held.items():
        if task in by_task and result.episode < episodes_per_task:
            by_task[task].episodes.append(result)
    for results, n_steps, job_videos, _ in outputs:
        steps += n_steps
        videos += job_videos
        for r in results:
            by_task[r.task].episodes.append(r)
    for t in by_task.values():
        t.episodes.sort(key=lambda e: e.episode)
    return EvalReport(
        suite=suite.name,
        policy=policy_name,
        tasks=list(by_task.values()),
        seconds=seconds,
        steps=steps,
        videos=sorted(videos),
        task_seed=suite.task_seed,
    )


def _held_episodes(store: Any, seed: int) -> dict[tuple[str, int], EpisodeResult]:
    """The episodes a recording store holds already, as results, by (task, episode number)."""
    meta = store.episode_meta()
    lengths = np.diff(np.concatenate([[0], store.episode_ends]))
    keys = ["intervention"] if "intervention" in store.schema.keys else []
    held = {}
    for i in range(store.num_episodes):
        steps = store.read_episode(i, keys) if keys else {}
        episode = int(meta["seed"][i]) - seed
        held[(str(meta["task"][i]), episode)] = EpisodeResult(
            task=str(meta["task"][i]),
            episode=episode,
            seed=int(meta["seed"][i]),
            variation=int(meta["variation"][i]),
            success=bool(meta["success"][i]),
            length=int(lengths[i]),
            interventions=int(np.sum(steps.get("intervention", 0))),
        )
    return held


class CheckpointPolicies:
    """A picklable policy factory: one policy per task, from a checkpoint loaded once per
    process (every task's policy is a copy, with its own history and action queue)."""

    def __init__(
        self, checkpoint: str | os.PathLike, act_ahead: int = 0, acting: Sequence[str] = ()
    ) -> None:
        self.checkpoint = str(checkpoint)
        self.act_ahead = act_ahead
        self.acting = tuple(acting)
        self._loaded: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_loaded": None}

    def __call__(self, task: Any) -> Policy:
        import copy

        import torch

        from il.policies.registry import load_policy

        if self._loaded is None:
            torch.set_num_threads(1)  # one env per core: the workers are the parallelism
            self._loaded = load_policy(self.checkpoint, acting=self.acting)
        policy = copy.deepcopy(self._loaded)
        policy.set_act_ahead(self.act_ahead)
        policy.reset(task=task.name if policy.spec.tasks else None)
        return _TaskBound(policy, task.name if policy.spec.tasks else None)


class _TaskBound:
    """A policy whose `reset()` keeps its task (evaluation resets without arguments)."""

    def __init__(self, policy: Any, task: str | None) -> None:
        self.policy, self.task = policy, task

    def reset(self, seed: int | None = None) -> None:
        self.policy.reset(task=self.task, seed=seed)

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        return self.policy.act(observation)


def checkpoint_suite(
    env: Mapping[str, Any],
    trained_tasks: Sequence[str],
    *,
    suite: str | None = None,
    split: str = "train",
    tasks: Sequence[str] = (),
    task_seed: int | None = None,
) -> TaskSuite:
    """The tasks a checkpoint is evaluated on, from its spec alone (`env`, `trained_tasks`), so
    a caller can size its work before any weights are read: the suite it was trained in (or
    `suite`), narrowed to the tasks it learned and then to `tasks`, each name resolved the
    way the suite resolves it. Their variations are those of `task_seed`, by default the
    benchmark seed its demonstrations were recorded with (0 for checkpoints that predate it)."""
    name = suite or env.get("suite")
    if name is None:
        raise ValueError("the checkpoint does not name its suite; pass one with --env")
    seed = int(env.get("task_seed", 0)) if task_seed is None else task_seed
    chosen = envs.suite(name, split=split if suite else env.get("split", split), seed=seed)
    trained = env.get("tasks") or trained_tasks
    if suite is None and trained:  # the tasks it was trained on, of the suite it came from
        chosen = chosen.subset(t for t in chosen.task_names if t in trained)
    if tasks:
        chosen = chosen.subset(tasks)
    if trained_tasks:
        unknown = [t for t in chosen.task_names if t not in trained_tasks]
        if unknown:
            raise ValueError(
                f"the policy was not trained on {', '.join(unknown[:3])}; evaluate it on a suite "
                f"of its tasks ({', '.join(trained_tasks[:3])}, ...)"
            )
    return chosen


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    suite: str | None = None,
    split: str = "train",
    tasks: Sequence[str] = (),
    task_seed: int | None = None,
    act_ahead: int = 0,
    acting: Sequence[str] = (),
    intervene: tuple[str, Any] | None = None,
    record: str | os.PathLike | None = None,
    **kwargs: Any,
) -> EvalReport:
    """Evaluate a checkpoint in the env it describes: its suite (or `suite`), its observation
    keys, image size and episode length. `tasks`: only these tasks of that suite, on the same
    variations. `task_seed`: the benchmark seed of the variations (default: its
    demonstrations'; another one evaluates on variations it never saw). `act_ahead`: roll out
    as a deployment with `Policy.set_act_ahead` would. `acting`: `model.key=value` changes to
    how it acts (see `load_policy`). `intervene`: an intervener's name and its
    `InterveneSpec` (see `il.interventions`); `record`: a store to commit every episode to."""
    from il.interventions import Interveners, rollout_schema
    from il.policies.base import resolve_checkpoint
    from il.policies.registry import check_acts, load_policy
    from robots.action import check_actions

    folder = resolve_checkpoint(checkpoint)
    check_acts(folder)  # a pretrained encoder is refused here, in one line
    policy = load_policy(folder, acting=acting)  # bad values fail here, before any worker starts
    policy.set_act_ahead(act_ahead)
    env = policy.spec.env
    chosen = checkpoint_suite(
        env, policy.spec.tasks, suite=suite, split=split, tasks=tasks, task_seed=task_seed
    )
    # the checkpoint meets the env here: its actions must mean what the env's do
    check_actions(
        policy.spec.action,
        envs.family_of(chosen.name).action_convention,
        f"the checkpoint {folder}",
        chosen.name,
        produced_dim=policy.spec.action_dim,
        fix="evaluate it in the env family whose demonstrations it learnt from",
    )
    kwargs.setdefault("obs", tuple(policy.spec.env_key(k) for k in policy.spec.obs_shapes))
    kwargs.setdefault("image_size", int(env.get("image_size", 84)))
    if env.get("max_episode_steps"):  # else the family's
        kwargs.setdefault("max_episode_steps", int(env["max_episode_steps"]))
    kwargs.setdefault("policy_name", " ".join([f"{policy.name} ({folder})", *acting]))
    interveners = None if intervene is None else Interveners(*intervene, policy)
    if record is not None:
        kwargs["record"] = (record, rollout_schema(policy.spec, chosen, interveners, str(folder)))
    return evaluate(
        chosen, CheckpointPolicies(folder, act_ahead, acting), intervener=interveners, **kwargs
    )
