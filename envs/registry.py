"""Names → environments and suites: the single entry point `make` / `make_vec` / `suite`."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from envs import maze
from envs.metaworld import (
    SUITES,
    TASKS,
    MetaWorldEnv,
    Suite,
    UnknownNameError,
    check_task,
    load_suite,
    unknown,
)

__all__ = ["defaults", "list_envs", "list_suites", "make", "make_vec", "suite"]

_FAMILIES = ("metaworld", "maze")


def list_envs() -> list[str]:
    """Every single-task environment name."""
    return [f"metaworld/{t}" for t in TASKS]


def list_suites() -> list[str]:
    """Every suite name (MT1/ML1 take a task: `metaworld/MT1/<task>`)."""
    return [f"metaworld/{s}" for s in SUITES]


def _split_name(name: str) -> tuple[str, str]:
    family, sep, rest = name.partition("/")
    if not sep or not rest:
        raise UnknownNameError(
            f"env name {name!r} needs a family prefix, e.g. 'metaworld/pick-place-v3', "
            "'metaworld/MT10' or 'maze/tunnel16/20'"
        )
    if family not in _FAMILIES:
        raise unknown("environment family", family, _FAMILIES)
    return family, rest


def defaults(name: str) -> dict[str, Any]:
    """The family's rollout defaults: observation keys and episode length."""
    family, _ = _split_name(name)
    if family == "maze":
        return {"obs": maze.OBS_KEYS, "max_episode_steps": maze.MAX_EPISODE_STEPS}
    return {"obs": ("state",), "max_episode_steps": 500}


def suite(name: str, split: str = "train", seed: int = 0) -> Suite | maze.MazeSuite:
    """A suite of tasks with fixed variations.

    `seed` is Meta-World's benchmark seed: it fixes which object and goal positions form each
    task's variations (50 per task). Episode seeds then choose among them. Maze suites
    (`maze/tunnel16/20`: the first 20 mazes of `split`) have no benchmark seed.
    """
    family, rest = _split_name(name)
    if family == "maze":
        try:
            return maze.load_suite(rest, split)
        except ValueError as e:
            raise UnknownNameError(str(e)) from None
    kind, _, task = rest.partition("/")
    if kind not in SUITES:
        if rest in TASKS or f"{rest}-v3" in TASKS:
            kind, task = "MT1", rest
        else:
            raise unknown("Meta-World suite", kind, SUITES)
    if kind in ("MT1", "ML1") and not task:
        raise UnknownNameError(f"{kind} needs a task, e.g. 'metaworld/{kind}/pick-place-v3'")
    if task and kind not in ("MT1", "ML1"):
        raise UnknownNameError(f"suite {kind} takes no task; drop '/{task}'")
    return load_suite(kind, split, task or None, seed)


def make(
    name: str, *, seed: int | None = None, task_seed: int = 0, **kwargs: Any
) -> MetaWorldEnv | maze.MazeEnv:
    """One environment by name, e.g. `make("metaworld/pick-place-v3", obs=("state",
    "image/corner"), image_size=84, seed=0)` or `make("maze/tunnel16-test-0003")`.

    `seed` seeds the episode RNG (which variation each reset picks); `task_seed` is the benchmark
    seed that fixes the variations themselves. Other keyword arguments go to `MetaWorldEnv`
    (or `MazeEnv`).
    """
    family, rest = _split_name(name)
    if family == "maze":
        try:
            env = maze.make(rest, **kwargs)
        except ValueError as e:
            raise UnknownNameError(str(e)) from None
        if seed is not None:
            env.reset(seed=seed)
        return env
    if rest.split("/", 1)[0] in SUITES:
        raise UnknownNameError(
            f"{name!r} is a suite, not a single env; use envs.make_vec({name!r}) or "
            f"envs.suite({name!r}).make(task)"
        )
    task = check_task(rest)
    env = load_suite("MT1", "train", task, task_seed).make(task, **kwargs)
    if seed is not None:
        env.reset(seed=seed)
    return env


def make_vec(
    name: str,
    *,
    envs_per_task: int = 1,
    vectorization_mode: str = "sync",
    split: str = "train",
    task_seed: int = 0,
    **kwargs: Any,
) -> gym.vector.VectorEnv:
    """A vector env over one task (`metaworld/<task>`) or every task of a suite."""
    family, rest = _split_name(name)
    if family == "maze":
        return suite(name, split=split).make_vec(envs_per_task, vectorization_mode, **kwargs)
    if rest in TASKS or f"{rest}-v3" in TASKS:
        chosen = load_suite("MT1", "train", check_task(rest), task_seed)
    else:
        chosen = suite(name, split=split, seed=task_seed)
    return chosen.make_vec(envs_per_task, vectorization_mode, **kwargs)
