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
"""

import os as _os
import sys as _sys

# Headless by default on Linux; must be set before MuJoCo is first imported.
if _sys.platform.startswith("linux"):
    _os.environ.setdefault("MUJOCO_GL", "egl")

from envs.camera import CameraModel, triangulate
from envs.maze import MazeEnv, MazeSuite
from envs.metaworld import (
    CAMERAS,
    DIFFICULTY,
    INSTRUCTIONS,
    SUITES,
    TASKS,
    MetaWorldEnv,
    Suite,
    SuiteTask,
    UnknownNameError,
)
from envs.registry import defaults, list_envs, list_suites, make, make_vec, suite
from envs.rendering import Renderer, RenderOptions

__all__ = [
    "CAMERAS",
    "DIFFICULTY",
    "INSTRUCTIONS",
    "SUITES",
    "TASKS",
    "CameraModel",
    "MazeEnv",
    "MazeSuite",
    "MetaWorldEnv",
    "RenderOptions",
    "Renderer",
    "Suite",
    "SuiteTask",
    "UnknownNameError",
    "defaults",
    "list_envs",
    "list_suites",
    "make",
    "make_vec",
    "suite",
    "triangulate",
]
