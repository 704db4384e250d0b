"""The maze family: generator, BFS expert and its procedure, the env, names and recording."""

from __future__ import annotations

import numpy as np
import pytest

import envs
from envs.maze import (
    ACTIONS,
    AGENT,
    GOAL,
    NOT_REACHED,
    WALL,
    BFSExpert,
    MazeEnv,
    bfs_procedure,
    build_maze,
    max_layers,
    tunnel_walls,
)
from il.data.store import DemoStore
from il.record import record_expert


def brute_force_distances(walls: np.ndarray, goal: tuple[int, int]) -> np.ndarray:
    """Shortest-path length of every free cell to the goal by Floyd–Warshall over all free
    cells (no queue, no layers: nothing in common with the BFS under test); -1 on walls."""
    free = [tuple(c) for c in np.argwhere(~walls)]
    index = {c: i for i, c in enumerate(free)}
    n = len(free)
    dist = np.full((n, n), np.inf)
    np.fill_diagonal(dist, 0)
    for (r, c), i in index.items():
        for dr, dc in ACTIONS:
            j = index.get((r + dr, c + dc))
            if j is not None:
                dist[i, j] = 1
    for k in range(n):
        dist = np.minimum(dist, dist[:, k : k + 1] + dist[k : k + 1, :])
    out = np.full(walls.shape, -1.0)
    for c, i in index.items():
        out[c] = dist[i, index[goal]]
    return out


@pytest.mark.parametrize("split,index", [("train", 0), ("train", 7), ("test", 3)])
def test_bfs_procedure_matches_brute_force_shortest_paths(split, index):
    maze = build_maze("tunnel", 16, split, index)
    dist = brute_force_distances(maze.walls, maze.goal)
    starts = [tuple(c) for c in maze.free_cells() if tuple(c) != maze.goal]
    for agent in starts:
        maps, action = bfs_procedure(maze.walls, maze.goal, agent)
        d = int(dist[agent])
        assert len(maps) == d, "one map per frontier layer, ending at the agent's"
        for layer, m in enumerate(maps, start=1):
            reached = m != NOT_REACHED
            expected = (dist >= 1) & (dist <= layer)
            np.testing.assert_array_equal(reached, expected)
            for r, c in np.argwhere(reached):
                dr, dc = ACTIONS[m[r, c]]
                assert dist[r + dr, c + dc] == dist[r, c] - 1, "each action steps toward the goal"
            if layer > 1:  # layers only add cells; a reached cell keeps its action
                before = maps[layer - 2]
                kept = before != NOT_REACHED
                np.testing.assert_array_equal(m[kept], before[kept])
        assert action == maps[-1][agent]
    # Following the expert from the farthest start takes exactly its distance.
    env = MazeEnv(maze)
    far = max(starts, key=lambda c: dist[c])
    obs, _ = env.reset(options={"start": far})
    expert = BFSExpert()
    for _ in range(int(dist[far])):
        obs, reward, terminated, _, info = env.step(expert(obs))
    assert terminated and info["success"] and reward == 1.0


def test_bfs_rejects_start_at_goal_and_unreachable_goal():
    walls = np.ones((5, 5), dtype=bool)
    walls[1, 1] = walls[1, 3] = False
    with pytest.raises(ValueError, match="at the goal"):
        bfs_procedure(walls, (1, 1), (1, 1))
    with pytest.raises(ValueError, match="cannot reach"):
        bfs_procedure(walls, (1, 1), (1, 3))


def test_generated_mazes_are_solvable_one_cell_tunnels():
    seen = set()
    for split in ("train", "test"):
        for index in range(60):
            maze = build_maze("tunnel", 16, split, index)
            walls = maze.walls
            assert walls[0].all() and walls[-1].all() and walls[:, 0].all() and walls[:, -1].all()
            assert not walls[maze.goal]
            # Every free cell reaches the goal.
            assert np.isfinite(brute_force_distances(walls, maze.goal)[~walls]).all()
            # One cell wide: no 2×2 block of free cells anywhere.
            free = ~walls
            assert not (free[:-1, :-1] & free[1:, :-1] & free[:-1, 1:] & free[1:, 1:]).any()
            seen.add((walls.tobytes(), maze.goal))
    assert len(seen) == 120, "train and test mazes are all different"
    # Same (split, index): same maze; the generator itself is seeded.
    a, b = build_maze("tunnel", 16, "test", 5), build_maze.__wrapped__("tunnel", 16, "test", 5)
    np.testing.assert_array_equal(a.walls, b.walls)
    assert a.goal == b.goal
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    np.testing.assert_array_equal(tunnel_walls(21, rng_a), tunnel_walls(21, rng_b))


def test_max_layers_bounds_every_procedure():
    longest = 0
    for index in range(40):
        maze = build_maze("tunnel", 16, "train", index)
        dist = brute_force_distances(maze.walls, maze.goal)
        longest = max(longest, int(dist.max()))
    assert max_layers(16) == 100
    assert longest <= max_layers(16)


def test_maze_env_moves_blocks_and_ends():
    env = envs.make("maze/tunnel16-train-0002", max_episode_steps=5)
    obs, info = env.reset(seed=4)
    grid = obs["grid"]
    assert grid.shape == (16, 16, 3) and grid.dtype == np.uint8
    assert grid[..., AGENT].sum() == 1 and grid[..., GOAL].sum() == 1
    np.testing.assert_array_equal(grid[..., WALL].astype(bool), env.maze.walls)
    assert env.reset(seed=4)[1]["variation"] == info["variation"]  # seeded starts repeat
    # A move into a wall leaves the agent in place.
    r, c = env.agent
    blocked = next(a for a, (dr, dc) in enumerate(ACTIONS) if env.maze.walls[r + dr, c + dc])
    obs, reward, terminated, truncated, _ = env.step(np.array([blocked]))
    assert env.agent == (r, c) and reward == 0.0 and not terminated and not truncated
    for _ in range(4):
        *_, terminated, truncated, info = env.step(blocked)
    assert truncated and not terminated and not info["success"]
    with pytest.raises(ValueError, match="one integer"):
        env.step(7)
    with pytest.raises(ValueError, match="one integer"):
        env.step(np.array([0, 1]))


def test_maze_names_and_suites():
    suite = envs.suite("maze/tunnel16/3", split="test")
    assert suite.task_names == (
        "tunnel16-test-0000",
        "tunnel16-test-0001",
        "tunnel16-test-0002",
    )
    env = suite.make(1)
    assert env.maze.name == "tunnel16-test-0001" and env.suite == "maze/tunnel16/3"
    assert envs.defaults("maze/tunnel16/3") == {"obs": ("grid",), "max_episode_steps": 100}
    for bad, match in [
        ("maze/tunnel16", "number of mazes"),
        ("maze/hex16/3", "unknown maze layout"),
    ]:
        with pytest.raises(envs.UnknownNameError, match=match):
            envs.suite(bad)
    with pytest.raises(envs.UnknownNameError, match="split"):
        envs.suite("maze/tunnel16/3", split="val")
    with pytest.raises(envs.UnknownNameError, match="is a suite"):
        envs.make("maze/tunnel16/3")
    with pytest.raises(envs.UnknownNameError, match="named"):
        envs.make("maze/tunnel16-train")


def test_recorded_maze_store_holds_the_procedure(tmp_path):
    suite = envs.suite("maze/tunnel16/2")
    path = str(tmp_path / "maze.zarr")
    summary = record_expert(suite, path, episodes_per_task=2, max_episode_steps=100)
    assert summary.recorded == 4
    again = record_expert(suite, path, episodes_per_task=2, max_episode_steps=100)
    assert (again.recorded, again.skipped, again.episodes_in_store) == (0, 4, 4)
    store = DemoStore.open(path)
    assert store.schema.source["task_in_observation"] is True
    assert store.schema.action["type"] == "discrete"
    for episode in range(store.num_episodes):
        steps = store.read_episode(episode)
        meta = store.episode(episode).meta
        maze = suite.task(meta["task"]).maze
        assert meta["success"] and steps["success"][-1]
        for t in range(len(steps["action"])):
            agent = tuple(np.argwhere(steps["obs/grid"][t][..., AGENT])[0])
            maps, action = bfs_procedure(maze.walls, maze.goal, agent)
            n = int(steps["procedure/bfs_layers"][t])
            assert n == len(maps) and steps["action"][t, 0] == action
            np.testing.assert_array_equal(steps["procedure/bfs_maps"][t][:n], maps)
            # Past the count the last map repeats.
            assert (steps["procedure/bfs_maps"][t][n:] == maps[-1]).all()
