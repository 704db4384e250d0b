"""Simulated environments for imitation learning, usable on their own (no `il` import).

One constructor for everything::

    import envs
    env = envs.make("metaworld/pick-place-v3", obs=("state", "image/corner"), image_size=84)
    suite = envs.suite("metaworld/ML10", split="test")
    vec = envs.make_vec("metaworld/MT10", envs_per_task=2, vectorization_mode="async")

Names: `metaworld/<task>` for one task, `metaworld/<suite>` for a suite (MT10, MT50, ML10, ML45,
easy, medium, hard, very_hard) and `metaworld/MT1/<task>` or `metaworld/ML1/<task>` for the
single-task benchmarks. `maze/tunnel16/20` is a suite of the first 20 discrete 16×16 mazes of a
split (`train` or `test`: disjoint mazes), `maze/tunnel16-test-0003` one maze (see `envs.maze`).
Each family is one module described by an `EnvFamily` (`envs.family`), listed in
`envs.registry.FAMILIES`.

`from envs import make, CAMERAS, TaskSuite, ...` works for every public name, but the modules
behind them load on first use: `import envs` imports no simulator, and naming a maze never
imports Meta-World or MuJoCo.
"""

import importlib as _importlib
import os as _os
import sys as _sys
from typing import Any as _Any

# Headless by default on Linux; must be set before MuJoCo is first imported, which happens
# after this line whichever submodule imports it.
if _sys.platform.startswith("linux"):
    _os.environ.setdefault("MUJOCO_GL", "egl")

# The registry is light (gymnasium, no simulator) and imported at once: its `suite` must be what
# `envs.suite` means, not the `envs.suite` module, which importing a family loads.
from envs.registry import (
    FAMILIES,
    defaults,
    families,
    family_of,
    list_envs,
    list_suites,
    make,
    make_vec,
    suite,
)

_EXPORTS = {
    "CameraModel": "camera",
    "triangulate": "camera",
    "EnvFamily": "family",
    "UnknownNameError": "family",
    "MazeEnv": "maze",
    "MazeSuite": "maze",
    "CAMERAS": "metaworld",
    "DIFFICULTY": "metaworld",
    "INSTRUCTIONS": "metaworld",
    "SUITES": "metaworld",
    "TASKS": "metaworld",
    "MetaWorldEnv": "metaworld",
    "Suite": "metaworld",
    "SuiteTask": "metaworld",
    "Renderer": "rendering",
    "RenderOptions": "rendering",
    "TaskSuite": "suite",
}
_SUBMODULES = (
    "camera",
    "experts",
    "family",
    "language_motion",
    "maze",
    "metaworld",
    "registry",
    "rendering",
)
__all__ = [
    "CAMERAS",
    "DIFFICULTY",
    "FAMILIES",
    "INSTRUCTIONS",
    "SUITES",
    "TASKS",
    "CameraModel",
    "EnvFamily",
    "MazeEnv",
    "MazeSuite",
    "MetaWorldEnv",
    "RenderOptions",
    "Renderer",
    "Suite",
    "SuiteTask",
    "TaskSuite",
    "UnknownNameError",
    "defaults",
    "families",
    "family_of",
    "list_envs",
    "list_suites",
    "make",
    "make_vec",
    "suite",
    "triangulate",
]


def __getattr__(name: str) -> _Any:
    if name in _EXPORTS:
        return getattr(_importlib.import_module(f"envs.{_EXPORTS[name]}"), name)
    # `import envs; envs.maze.OBS_KEYS` worked while this module imported every submodule.
    if name in _SUBMODULES:
        return _importlib.import_module(f"envs.{name}")
    raise AttributeError(f"module 'envs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_SUBMODULES})
