"""Recording the BFS maze expert into a DemoStore, its procedure with every step.

The maze counterpart of `il.record`: `il record --env maze/tunnel16/20` lands here. Each step
stores the observation grid, the discrete action, and the expert's procedure — one map per BFS
layer, as procedure cloning learns it. The number of layers varies from step to step, so the
maps are stored in a fixed-size key (`max_layers(size)` maps, 100 for 16×16) with the count
beside them; maps past the count repeat the last one, which is what the search would keep
producing. Episodes are committed one at a time in (maze, seed) order, and re-running the
command skips the episodes already in the store, as expert recording does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from envs.maze import ACTION_NAMES, ACTIONS, MazeSuite, MazeTask, max_layers
from il.data.store import DemoStore, KeySpec, StoreSchema
from il.record import RecordSummary

__all__ = ["LAYERS_KEY", "MAPS_KEY", "maze_schema", "record_maze_expert", "rollout_maze_expert"]

MAPS_KEY = "procedure/bfs_maps"
"""The expert's procedure: one map per BFS layer, padded to `max_layers(size)`."""
LAYERS_KEY = "procedure/bfs_layers"
"""How many of those maps are the procedure's."""

ACTION_CONVENTION = {
    "type": "discrete",
    "n": len(ACTIONS),
    "names": list(ACTION_NAMES),
    "units": "one grid cell per step; (row, column) moves: "
    + ", ".join(f"{n} {m}" for n, m in zip(ACTION_NAMES, ACTIONS, strict=True)),
}


def maze_schema(suite: MazeSuite, max_episode_steps: int) -> StoreSchema:
    """The store schema for BFS-expert recordings of a maze suite."""
    size = suite.tasks[0].maze.size
    layers = max_layers(size)
    keys = {
        "obs/grid": KeySpec((size, size, 3), "uint8", "channels wall, goal, agent (0 or 1)"),
        "action": KeySpec((1,), "int64", "index of the move (names in attrs action)"),
        "reward": KeySpec((), "float32", "1 on reaching the goal, else 0"),
        "success": KeySpec((), "bool", "the agent is at the goal after the action"),
        MAPS_KEY: KeySpec(
            (layers, size, size),
            "uint8",
            "map of BFS layer l+1 from the goal: per cell the action toward the goal, or 4 "
            "where not reached yet; entries from procedure/bfs_layers on repeat the last",
            # Long chunks: a map compresses to a few hundred bytes, and small chunks would mean
            # thousands of files; training holds the key in memory anyway.
            chunk_steps=32,
        ),
        LAYERS_KEY: KeySpec(
            (), "int16", "BFS layers until the agent's cell is reached (its distance to the goal)"
        ),
    }
    source = {
        "env": "maze",
        "suite": suite.name,
        "split": suite.split,
        "tasks": list(suite.task_names),
        "max_episode_steps": int(max_episode_steps),
        "maze_size": size,
        "max_layers": layers,
        "procedure_classes": [*ACTION_NAMES, "not reached"],
        # The walls in the observation say which maze it is: policies get no task input and
        # can be run on mazes they never saw.
        "task_in_observation": True,
    }
    return StoreSchema(keys=keys, fps=10.0, action=dict(ACTION_CONVENTION), source=source)


def rollout_maze_expert(
    suite: MazeSuite, task: MazeTask, seed: int, max_episode_steps: int
) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """One expert episode of one maze as per-step arrays plus its episode metadata."""
    env = suite.make(task.name, max_episode_steps=max_episode_steps)
    layers = max_layers(env.maze.size)
    obs, _ = env.reset(seed=seed)
    steps: dict[str, list[np.ndarray]] = {}
    success = False
    while True:
        maps, action = env.expert_procedure()
        padded = np.concatenate([maps, np.repeat(maps[-1:], layers - len(maps), axis=0)])
        steps.setdefault("obs/grid", []).append(obs["grid"])
        steps.setdefault("action", []).append(np.array([action], dtype=np.int64))
        steps.setdefault(MAPS_KEY, []).append(padded)
        steps.setdefault(LAYERS_KEY, []).append(np.int16(len(maps)))
        obs, reward, terminated, truncated, info = env.step(action)
        steps.setdefault("reward", []).append(np.float32(reward))
        steps.setdefault("success", []).append(np.bool_(info["success"]))
        success = success or bool(info["success"])
        if terminated or truncated:
            break
    meta = {
        "task": task.name,
        "instruction": task.instruction,
        "success": success,
        "seed": seed,
        "source": "expert",
    }
    return {k: np.stack(v) for k, v in steps.items()}, meta


def record_maze_expert(
    suite: MazeSuite,
    out: str,
    *,
    episodes_per_task: int,
    max_episode_steps: int,
    seed: int = 0,
    on_episode: Callable[[str, bool], None] | None = None,
) -> RecordSummary:
    """Record `episodes_per_task` expert episodes (seeds `seed`, `seed + 1`, ...: random
    starts) in every maze of `suite` into `out`."""
    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be at least 1, got {episodes_per_task}")
    store = DemoStore.open_or_create(out, maze_schema(suite, max_episode_steps))
    try:
        meta = store.episode_meta()
        have = {(str(t), int(s)) for t, s in zip(meta["task"], meta["seed"], strict=True)}
        recorded = skipped = 0
        for task in suite.tasks:
            for s in range(seed, seed + episodes_per_task):
                if (task.name, s) in have:
                    skipped += 1
                    continue
                arrays, episode_meta = rollout_maze_expert(suite, task, s, max_episode_steps)
                store.add_episode(arrays, **episode_meta)
                recorded += 1
                if on_episode is not None:
                    on_episode(task.name, bool(episode_meta["success"]))
        return RecordSummary(recorded, skipped, 0, store.num_episodes)
    finally:
        store.close()
