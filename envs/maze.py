"""Discrete mazes: the testbed of procedure cloning (Yang et al. 2022), usable without `il`.

Three parts, each usable alone:

- `tunnel_walls(size, rng)`: a maze of one-cell-wide corridors carved by a randomised
  depth-first search on the odd cells of a `size × size` grid, with a few shortcuts so that more
  than one path may lead to the goal (as the maze generator behind the paper's data does). A
  depth-first search visits every node, so every free cell is connected to every other: any
  start can reach any goal.
- `bfs_procedure(walls, goal, agent)`: the expert. It runs breadth-first search *from the goal*
  and logs one map per frontier layer; each newly reached cell holds the action that steps from
  it to the cell it was reached from, i.e. the first move of a shortest path to the goal. It
  stops at the layer that reaches the agent, whose cell then holds the expert's action. The
  list of maps is the procedure that procedure cloning learns to reproduce.
- `MazeEnv`: a gymnasium env on one maze (fixed walls and goal, random start per episode) with
  4 discrete actions and a `grid` observation of three binary channels (wall, goal, agent).

Mazes are named `tunnel16-train-0003`: layout and size, split, index. The train and test splits
draw their mazes from disjoint random streams, so a policy trained on train mazes is tested on
mazes it has never seen. A suite is the first n mazes of a split: `maze/tunnel16/20`.

The module ends with the maze's `FAMILY` (`envs.family.EnvFamily`): names, defaults, the expert
and what a recording stores (the grid, the move and the BFS maps), which is all `envs.make`, the
recorder, evaluation and the CLI know of mazes. It imports no simulator.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from envs.family import (
    EnvFamily,
    Listing,
    Recording,
    RecordSpec,
    StepKey,
    UnknownNameError,
)
from envs.suite import TaskSuite

__all__ = [
    "ACTIONS",
    "ACTION_CONVENTION",
    "ACTION_NAMES",
    "AGENT",
    "FAMILY",
    "GOAL",
    "LAYERS_KEY",
    "LAYOUTS",
    "MAPS_KEY",
    "MAX_EPISODE_STEPS",
    "NOT_REACHED",
    "OBS_KEYS",
    "SPLITS",
    "WALL",
    "BFSExpert",
    "Maze",
    "MazeEnv",
    "MazeSuite",
    "MazeTask",
    "bfs_procedure",
    "load_suite",
    "make",
    "max_layers",
    "parse_obs",
    "tunnel_walls",
]

ACTIONS: tuple[tuple[int, int], ...] = ((-1, 0), (0, 1), (1, 0), (0, -1))
"""(row, column) step of each action."""
ACTION_NAMES: tuple[str, ...] = ("up", "right", "down", "left")
NOT_REACHED = len(ACTIONS)
"""The fifth class of a procedure map: a cell the search has not reached (walls never are; nor
is the goal, where the search starts and no action is needed)."""
WALL, GOAL, AGENT = 0, 1, 2
"""Channels of the `grid` observation."""
OBS_KEYS = ("grid",)
MAX_EPISODE_STEPS = 100
"""The paper's episode cap for training data and evaluation."""
SPLITS = ("train", "test")
LAYOUTS = ("tunnel",)
SHORTCUT_PROBABILITY = 0.1
"""Chance that the carving search opens a wall to a node it already visited."""
ACTION_CONVENTION = {
    "type": "discrete",
    "names": list(ACTION_NAMES),
    "frame": "grid",
    "gripper": "",
    "note": "one grid cell per step; (row, column) moves: "
    + ", ".join(f"{n} {m}" for n, m in zip(ACTION_NAMES, ACTIONS, strict=True)),
}
"""How to read an action, in the JSON form of `robots.action.ActionSpec` (envs does not import
robots): a recording's `action` attributes; the action is the index of one of `names`."""
MAPS_KEY = "procedure/bfs_maps"
"""The store key of the expert's procedure: one map per BFS layer, padded to
`max_layers(size)`."""
LAYERS_KEY = "procedure/bfs_layers"
"""The store key of how many of those maps are the procedure's."""
_NAME = re.compile(r"^(?P<layout>[a-z]+)(?P<size>\d+)$")
_TASK = re.compile(r"^(?P<layout>[a-z]+)(?P<size>\d+)-(?P<split>[a-z]+)-(?P<index>\d+)$")


# --- generation ------------------------------------------------------------------------------
def tunnel_walls(
    size: int, rng: np.random.Generator, shortcut_probability: float = SHORTCUT_PROBABILITY
) -> np.ndarray:
    """A `(size, size)` bool wall map of one-cell-wide corridors.

    Nodes sit on odd coordinates inside a one-cell outer wall; a randomised depth-first search
    from the top-left node carves the wall between each node and an unvisited neighbour, and
    with `shortcut_probability` also towards a visited one (a loop). The search is iterative,
    one stack frame per node holding the directions it has left to try, so it visits directions
    in exactly the order a recursive carve would, with no recursion limit.
    """
    if size < 5:
        raise ValueError(f"a tunnel maze needs size >= 5, got {size}")
    walls = np.ones((size, size), dtype=bool)
    last = size - 2  # highest coordinate a corridor may occupy
    walls[1, 1] = False
    stack: list[tuple[int, int, list[int]]] = [(1, 1, list(rng.permutation(4)))]
    while stack:
        r, c, directions = stack[-1]
        if not directions:
            stack.pop()
            continue
        dr, dc = ACTIONS[directions.pop(0)]
        nr, nc = r + 2 * dr, c + 2 * dc
        if not (1 <= nr <= last and 1 <= nc <= last):
            continue
        if walls[nr, nc]:  # unvisited: carve to it and continue from there
            walls[r + dr, c + dc] = walls[nr, nc] = False
            stack.append((nr, nc, list(rng.permutation(4))))
        elif rng.random() < shortcut_probability:
            walls[r + dr, c + dc] = False
    return walls


@dataclass(frozen=True, eq=False)
class Maze:
    """Walls and goal of one maze; the agent's start is drawn per episode."""

    name: str
    walls: np.ndarray
    """(size, size) bool, True where a wall is."""
    goal: tuple[int, int]

    @property
    def size(self) -> int:
        return int(self.walls.shape[0])

    def free_cells(self) -> np.ndarray:
        """(n, 2) row, column of every cell that is not a wall, in row-major order."""
        return np.argwhere(~self.walls)

    def grid(self, agent: tuple[int, int]) -> np.ndarray:
        """The observation: `(size, size, 3)` uint8 channels wall, goal, agent."""
        grid = np.zeros((self.size, self.size, 3), dtype=np.uint8)
        grid[..., WALL] = self.walls
        grid[(*self.goal, GOAL)] = 1
        grid[(*agent, AGENT)] = 1
        return grid


def parse_name(name: str) -> tuple[str, int]:
    """`tunnel16` → ("tunnel", 16), or a one-line error."""
    match = _NAME.match(name)
    if match is None or match["layout"] not in LAYOUTS:
        raise ValueError(
            f"unknown maze layout {name!r}; name one as <layout><size>, e.g. 'tunnel16' "
            f"(layouts: {', '.join(LAYOUTS)})"
        )
    return match["layout"], int(match["size"])


@functools.lru_cache(maxsize=1024)
def build_maze(layout: str, size: int, split: str, index: int) -> Maze:
    """Maze `index` of a split. Each (layout, size, split, index) has its own random stream,
    so the train and test mazes never share one, and adding mazes never changes earlier ones."""
    if split not in SPLITS:
        raise ValueError(f"unknown maze split {split!r}; splits: {', '.join(SPLITS)}")
    if index < 0:
        raise ValueError(f"maze index must be >= 0, got {index}")
    rng = np.random.default_rng([LAYOUTS.index(layout), size, SPLITS.index(split), index])
    walls = tunnel_walls(size, rng)
    free = np.argwhere(~walls)
    goal = free[rng.integers(len(free))]
    walls.setflags(write=False)
    return Maze(task_name(layout, size, split, index), walls, (int(goal[0]), int(goal[1])))


def task_name(layout: str, size: int, split: str, index: int) -> str:
    return f"{layout}{size}-{split}-{index:04d}"


def maze_by_name(name: str) -> Maze:
    """The maze named `tunnel16-train-0003`, or a one-line error."""
    match = _TASK.match(name)
    if match is None:
        raise ValueError(
            f"unknown maze {name!r}; mazes are named <layout><size>-<split>-<index>, e.g. "
            "'tunnel16-train-0003'"
        )
    layout, size = parse_name(f"{match['layout']}{match['size']}")
    return build_maze(layout, size, match["split"], int(match["index"]))


def max_layers(size: int) -> int:
    """An upper bound on the BFS layers of any tunnel maze of this size: a shortest path is no
    longer than the path through the carving tree, which has n² nodes two cells apart
    (n = (size - 1) // 2), plus one cell at each end. 100 for size 16, the paper's cap."""
    n = (size - 1) // 2
    return 2 * n * n + 2


# --- the expert ------------------------------------------------------------------------------
def bfs_procedure(
    walls: np.ndarray, goal: tuple[int, int], agent: tuple[int, int]
) -> tuple[np.ndarray, int]:
    """The expert's procedure and action: `(maps, action)`.

    `maps` is `(L, size, size)` uint8, one map per BFS layer from the goal (layer l holds every
    cell at distance <= l, each with the action toward the cell it was reached from; all other
    cells are `NOT_REACHED`), ending with the layer that reaches the agent, so L is the agent's
    shortest-path distance to the goal. Cells of a layer are expanded in the order they were
    reached and neighbours in action order, which fixes ties between equally short paths.
    """
    walls = np.asarray(walls, dtype=bool)
    size_r, size_c = walls.shape
    goal, agent = (int(goal[0]), int(goal[1])), (int(agent[0]), int(agent[1]))
    if walls[goal] or walls[agent]:
        raise ValueError("goal and agent must be on free cells")
    if goal == agent:
        raise ValueError("the agent is at the goal: there is no action to take")
    current = np.full(walls.shape, NOT_REACHED, dtype=np.uint8)
    reached = walls.copy()
    reached[goal] = True
    frontier = [goal]
    maps = []
    while frontier:
        next_frontier = []
        for r, c in frontier:
            for action, (dr, dc) in enumerate(ACTIONS):
                nr, nc = r - dr, c - dc  # the neighbour from which `action` leads to (r, c)
                if 0 <= nr < size_r and 0 <= nc < size_c and not reached[nr, nc]:
                    reached[nr, nc] = True
                    current[nr, nc] = action
                    next_frontier.append((nr, nc))
        if not next_frontier:
            break
        maps.append(current.copy())
        if current[agent] != NOT_REACHED:
            return np.stack(maps), int(current[agent])
        frontier = next_frontier
    raise ValueError(f"the agent at {agent} cannot reach the goal at {goal}")


class BFSExpert:
    """The maze expert as a policy: `expert(observation)` → the action, an int; `act` → the
    action as the store keeps it and the procedure as store keys (`envs.family.Expert`).

    The number of BFS layers varies from step to step, so the maps are given in a fixed-size
    key (`max_layers(size)` maps, 100 for 16×16) with the count beside them; maps past the count
    repeat the last one, which is what the search would keep producing.
    """

    def act(self, observation: Mapping[str, np.ndarray]) -> tuple[np.ndarray, dict[str, Any]]:
        maps, action = bfs_procedure(*read_grid(observation["grid"]))
        layers = max_layers(maps.shape[-1])
        padded = np.concatenate([maps, np.repeat(maps[-1:], layers - len(maps), axis=0)])
        procedure = {MAPS_KEY: padded, LAYERS_KEY: np.int16(len(maps))}
        return np.array([action], dtype=np.int64), procedure

    def __call__(self, observation: Mapping[str, np.ndarray]) -> int:
        return bfs_procedure(*read_grid(observation["grid"]))[1]


def read_grid(grid: np.ndarray) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """Walls, goal and agent cell of a `grid` observation."""
    grid = np.asarray(grid)
    if grid.ndim != 3 or grid.shape[-1] != 3:
        raise ValueError(f"a maze grid is (size, size, 3), got shape {grid.shape}")
    goal = np.argwhere(grid[..., GOAL])
    agent = np.argwhere(grid[..., AGENT])
    if len(goal) != 1 or len(agent) != 1:
        raise ValueError("a maze grid needs exactly one goal cell and one agent cell")
    return grid[..., WALL].astype(bool), tuple(goal[0].tolist()), tuple(agent[0].tolist())


# --- the environment -------------------------------------------------------------------------
class MazeEnv(gym.Env):
    """One maze: walls and goal fixed, the agent's start drawn by the episode seed.

    `reset(seed=s)` starts at a free cell other than the goal chosen by `s` (the same cell on
    every run); `reset(options={"start": (row, col)})` picks it. A move into a wall leaves the
    agent in place. Reward 1 on reaching the goal, which ends the episode
    (`info["success"]`); `max_episode_steps` truncates it. `variation` is the start cell's
    index among the free cells, as Meta-World envs report their variation.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}  # noqa: RUF012

    def __init__(
        self,
        maze: Maze | str,
        *,
        obs: Sequence[str] = OBS_KEYS,
        max_episode_steps: int = MAX_EPISODE_STEPS,
        terminate_on_success: bool = True,
        render_mode: str | None = None,
        render_size: int | None = None,
        render_options: Any = None,
        task_index: int = 0,
        suite: str | None = None,
    ) -> None:
        del render_options  # Meta-World's rendering options; a grid has nothing to set
        self.maze = maze_by_name(maze) if isinstance(maze, str) else maze
        self.task = self.maze.name
        self.task_index = task_index
        self.suite = suite
        self.instruction = "reach the goal"
        parse_obs(",".join(obs))
        if max_episode_steps <= 0:
            raise ValueError(f"max_episode_steps must be positive, got {max_episode_steps}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.max_episode_steps = int(max_episode_steps)
        self.terminate_on_success = terminate_on_success
        self.render_mode = render_mode
        size = self.maze.size
        self.render_size = int(render_size or 8 * size)
        self.observation_space = gym.spaces.Dict(
            {"grid": gym.spaces.Box(0, 1, (size, size, 3), dtype=np.uint8)}
        )
        self.action_space = gym.spaces.Discrete(len(ACTIONS))
        self._starts = [
            (int(r), int(c)) for r, c in self.maze.free_cells() if (r, c) != self.maze.goal
        ]
        self.agent: tuple[int, int] | None = None
        self.variation: int | None = None
        self._steps = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        if "start" in options:
            start = (int(options["start"][0]), int(options["start"][1]))
            if start not in self._starts:
                raise ValueError(f"start {start} is a wall, the goal, or off the {self.task} grid")
        elif seed is not None:
            # One draw from a generator of the seed alone: reset(seed=s) is the same start
            # whatever happened before.
            start = self._starts[int(np.random.default_rng(seed).integers(len(self._starts)))]
        else:
            start = self._starts[int(self.np_random.integers(len(self._starts)))]
        self.agent = start
        self.variation = self._starts.index(start)
        self._steps = 0
        return self._observe(), {"task": self.task, "variation": self.variation, "success": False}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self.agent is None:
            raise RuntimeError("call reset() before step()")
        index = _action_index(action)
        dr, dc = ACTIONS[index]
        r, c = self.agent[0] + dr, self.agent[1] + dc
        size = self.maze.size
        if 0 <= r < size and 0 <= c < size and not self.maze.walls[r, c]:
            self.agent = (r, c)
        self._steps += 1
        success = self.agent == self.maze.goal
        terminated = success and self.terminate_on_success
        truncated = not terminated and self._steps >= self.max_episode_steps
        info = {"success": success, "task": self.task, "variation": self.variation}
        return self._observe(), float(success), terminated, truncated, info

    def expert_procedure(self) -> tuple[np.ndarray, int]:
        """The BFS expert's maps and action for the current state."""
        if self.agent is None:
            raise RuntimeError("call reset() before asking the expert")
        return bfs_procedure(self.maze.walls, self.maze.goal, self.agent)

    def render(self) -> np.ndarray | None:
        """An RGB picture of the maze: walls dark, goal green, agent red."""
        if self.render_mode != "rgb_array" or self.agent is None:
            return None
        colours = np.array([[235, 235, 235], [40, 40, 48]], dtype=np.uint8)
        image = colours[self.maze.walls.astype(int)]
        image[self.maze.goal] = (40, 170, 80)
        image[self.agent] = (220, 50, 50)
        size = self.maze.size
        pick = (np.arange(self.render_size) * size) // self.render_size
        return image[pick][:, pick]

    def _observe(self) -> dict[str, np.ndarray]:
        assert self.agent is not None
        return {"grid": self.maze.grid(self.agent)}


def _action_index(action: Any) -> int:
    """An action as an int in 0..3 from an int, a numpy scalar or a one-element array."""
    flat = np.asarray(action).reshape(-1)
    if flat.size != 1 or not np.isfinite(flat[0]) or float(flat[0]) != int(flat[0]):
        raise ValueError(f"a maze action is one integer in 0..{len(ACTIONS) - 1}, got {action!r}")
    index = int(flat[0])
    if not 0 <= index < len(ACTIONS):
        raise ValueError(f"a maze action is one integer in 0..{len(ACTIONS) - 1}, got {index}")
    return index


def parse_obs(obs: str | None) -> tuple[str, ...]:
    """Observation keys of a maze env from a comma-separated string (None: the default)."""
    keys = tuple(k.strip() for k in (obs or ",".join(OBS_KEYS)).split(",") if k.strip())
    bad = [k for k in keys if k not in OBS_KEYS]
    if bad or not keys:
        raise ValueError(
            f"maze envs observe {', '.join(OBS_KEYS)} only; --obs {obs!r} names "
            f"{', '.join(bad) or 'nothing'}"
        )
    return keys


# --- suites ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MazeTask:
    """One maze of a suite: what `SuiteTask` is to Meta-World."""

    name: str
    index: int
    """Position in its suite."""

    family: ClassVar[str] = "maze"

    @property
    def instruction(self) -> str:
        return "reach the goal"

    @property
    def maze(self) -> Maze:
        return maze_by_name(self.name)


def _make_env(task: MazeTask, suite: str | None, kwargs: dict[str, Any]) -> MazeEnv:
    return MazeEnv(task.maze, task_index=task.index, suite=suite, **kwargs)


@dataclass(frozen=True)
class MazeSuite(TaskSuite):
    """The first n mazes of a split, with the interface of a Meta-World `Suite`."""

    tasks: tuple[MazeTask, ...]

    build_env = staticmethod(_make_env)

    def task_not_found(self, name: str) -> Exception:
        return ValueError(f"{name!r} is not a maze of {self.name} ({self.split})")


def load_suite(rest: str, split: str = "train") -> MazeSuite:
    """`tunnel16/20` → the first 20 mazes of `split`, or a one-line error."""
    layout_size, sep, count = rest.partition("/")
    layout, size = parse_name(layout_size)
    if not sep or not count.isdigit() or int(count) < 1:
        raise ValueError(
            f"a maze suite names its number of mazes: 'maze/{layout_size}/20' is the first 20 "
            f"mazes of a split, not {'maze/' + rest!r}"
        )
    if split not in SPLITS:
        raise ValueError(f"unknown maze split {split!r}; splits: {', '.join(SPLITS)}")
    tasks = tuple(MazeTask(task_name(layout, size, split, i), i) for i in range(int(count)))
    return MazeSuite(f"maze/{layout_size}/{int(count)}", split, tasks)


def make(rest: str, **kwargs: Any) -> MazeEnv:
    """`tunnel16-train-0003` → that maze's env; keyword arguments go to `MazeEnv`."""
    if "/" in rest:
        raise ValueError(
            f"'maze/{rest}' is a suite, not one maze; use envs.suite('maze/{rest}'), or name "
            "one maze, e.g. 'maze/tunnel16-train-0003'"
        )
    return MazeEnv(maze_by_name(rest), **kwargs)


# --- the family: what envs.make/suite, recording, evaluation and `il envs` read ---------------
def _no_task_seed(seed: int) -> None:
    if seed:
        raise ValueError(
            f"mazes have no task seed (a maze is fixed by its split and index); got {seed}, "
            "leave it at 0"
        )


def _suite(rest: str, split: str = "train", seed: int = 0) -> MazeSuite:
    _no_task_seed(seed)
    try:
        return load_suite(rest, split)
    except ValueError as e:
        raise UnknownNameError(str(e)) from None


def _make(rest: str, *, task_seed: int = 0, **kwargs: Any) -> MazeEnv:
    _no_task_seed(task_seed)
    try:
        return make(rest, **kwargs)
    except ValueError as e:
        raise UnknownNameError(str(e)) from None


def _expert(task: MazeTask) -> BFSExpert:
    del task  # the grid holds the walls and the goal: one expert serves every maze
    return BFSExpert()


def _recording(suite: MazeSuite, spec: RecordSpec) -> Recording:
    """Every step: the grid, the discrete action, reward and success, and the expert's
    procedure — one map per BFS layer, as procedure cloning learns it."""
    if spec.action_noise > 0:
        raise ValueError("maze actions are discrete: --action-noise needs continuous actions")
    size = suite.tasks[0].maze.size
    layers = max_layers(size)
    keys = {
        "obs/grid": StepKey((size, size, 3), "uint8", "channels wall, goal, agent (0 or 1)"),
        "action": StepKey((1,), "int64", "index of the move (names in attrs action)"),
        "reward": StepKey((), "float32", "1 on reaching the goal, else 0"),
        "success": StepKey((), "bool", "the agent is at the goal after the action"),
        MAPS_KEY: StepKey(
            (layers, size, size),
            "uint8",
            "map of BFS layer l+1 from the goal: per cell the action toward the goal, or 4 "
            "where not reached yet; entries from procedure/bfs_layers on repeat the last",
            # Long chunks: a map compresses to a few hundred bytes, and small chunks would mean
            # thousands of files; training holds the key in memory anyway.
            chunk_steps=32,
        ),
        LAYERS_KEY: StepKey(
            (), "int16", "BFS layers until the agent's cell is reached (its distance to the goal)"
        ),
    }
    source = {
        "max_episode_steps": int(spec.max_episode_steps),
        "maze_size": size,
        "max_layers": layers,
        "procedure_classes": [*ACTION_NAMES, "not reached"],
        # The walls in the observation say which maze it is: policies get no task input and
        # can be run on mazes they never saw.
        "task_in_observation": True,
    }
    return Recording(obs=OBS_KEYS, keys=keys, source=source)


FAMILY = EnvFamily(
    name="maze",
    example="maze/tunnel16/3",
    obs_keys=OBS_KEYS,
    max_episode_steps=MAX_EPISODE_STEPS,
    fps=float(MazeEnv.metadata["render_fps"]),
    action_convention=ACTION_CONVENTION,
    suite=_suite,
    make=_make,
    parse_obs=parse_obs,
    expert=_expert,
    recording=_recording,
    listing=Listing(
        title="Maze suites",
        suites=tuple((f"maze/{layout}16/<n>", "n", ",".join(SPLITS)) for layout in LAYOUTS),
        notes=(
            (
                "mazes",
                "maze/tunnel16/<n> is the first n mazes of --split train or test; "
                "maze/tunnel16-<split>-<i> is one maze",
            ),
            ("observations", ", ".join(OBS_KEYS)),
        ),
    ),
)
"""The discrete mazes as an env family (`envs.family.EnvFamily`)."""
