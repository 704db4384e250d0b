"""Names → environments and suites: the table of env families and the single entry point
`make` / `make_vec` / `suite` that dispatches through it.

A name is `<family>/<rest>`; the family's module (one row of `FAMILIES`) is imported the first
time the family is named and describes itself as an `EnvFamily` (`envs.family`). Nothing here
knows a family by name, so adding one is a module and a row.
"""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium as gym

from envs.family import EnvFamily, UnknownNameError, unknown
from envs.suite import TaskSuite

__all__ = [
    "FAMILIES",
    "defaults",
    "families",
    "family_of",
    "list_envs",
    "list_suites",
    "make",
    "make_vec",
    "suite",
]

FAMILIES: dict[str, str] = {
    "metaworld": "envs.metaworld",
    "maze": "envs.maze",
}
"""Family name → the module whose `FAMILY` describes it, imported on first use."""


def family_of(name: str) -> EnvFamily:
    """The family of an env or suite name (`maze/tunnel16/3`), or a family name (`maze`)."""
    family = name.partition("/")[0]
    if family not in FAMILIES:
        raise unknown("environment family", family, list(FAMILIES))
    return importlib.import_module(FAMILIES[family]).FAMILY


def families() -> list[EnvFamily]:
    """Every family, in table order (imports every family's module)."""
    return [family_of(name) for name in FAMILIES]


def _split_name(name: str) -> tuple[EnvFamily, str]:
    family, sep, rest = name.partition("/")
    if not sep or not rest:
        prefixes = " or ".join(f"'{f}/...'" for f in FAMILIES)
        raise UnknownNameError(
            f"env name {name!r} needs a family prefix, {prefixes}; `il envs` lists the names"
        )
    return family_of(family), rest


def list_envs() -> list[str]:
    """Every single-task environment name of the families that have finitely many."""
    return [name for family in families() for name in family.env_names]


def list_suites() -> list[str]:
    """Every suite name of the families that have finitely many (Meta-World's MT1/ML1 take a
    task: `metaworld/MT1/<task>`)."""
    return [name for family in families() for name in family.suite_names]


def defaults(name: str) -> dict[str, Any]:
    """The family's rollout defaults: observation keys and episode length."""
    family, _ = _split_name(name)
    return {"obs": family.obs_keys, "max_episode_steps": family.max_episode_steps}


def suite(name: str, split: str = "train", seed: int = 0) -> TaskSuite:
    """A suite of tasks with fixed variations, e.g. `suite("metaworld/ML10", split="test")` or
    `suite("maze/tunnel16/20")`.

    `seed` is the family's benchmark seed, where it has one: for Meta-World it fixes which
    object and goal positions form each task's variations (50 per task). Episode seeds then
    choose among them.
    """
    family, rest = _split_name(name)
    return family.suite(rest, split, seed)


def make(name: str, *, seed: int | None = None, task_seed: int = 0, **kwargs: Any) -> gym.Env:
    """One environment by name, e.g. `make("metaworld/pick-place-v3", obs=("state",
    "image/corner"), image_size=84, seed=0)` or `make("maze/tunnel16-test-0003")`.

    `seed` seeds the episode RNG (which variation each reset picks); `task_seed` is the benchmark
    seed that fixes the variations themselves. Other keyword arguments go to the family's env
    (`MetaWorldEnv`, `MazeEnv`).
    """
    family, rest = _split_name(name)
    env = family.make(rest, task_seed=task_seed, **kwargs)
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
    if family.make_vec is not None:
        return family.make_vec(
            rest,
            envs_per_task=envs_per_task,
            vectorization_mode=vectorization_mode,
            split=split,
            task_seed=task_seed,
            **kwargs,
        )
    return family.suite(rest, split, task_seed).make_vec(
        envs_per_task, vectorization_mode, **kwargs
    )
