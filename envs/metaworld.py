"""Meta-World v3 tasks and benchmark suites behind one gymnasium interface.

Meta-World's `reset(seed)` does not pick the task variation (object and goal positions): a
variation is a `Task` from a benchmark, applied with `set_task`. This module builds the benchmark
once per process, hands each environment the variations of its task, and lets the episode seed
choose among them, so `reset(seed=s)` reproduces the same episode on every run and machine.

Observations are a dict: `state` (39 float32: hand, gripper, objects, previous frame, goal),
`proprio` (its first 4: hand and gripper, what a real arm knows of itself) and `image/<camera>`
(h w 3 uint8, upright). Corner cameras of the Meta-World scene look at the table
upside down; they are turned 180° about their viewing axis in the model itself, so images, camera
models and segmentation all agree without flipping pixels afterwards.

Meta-World's fixed cameras frame the whole table, so a goal marker is one or two pixels at 84x84
and a policy from pixels cannot find it. Two cameras are added to every scene, aimed at the
region where objects and goals are placed, as one would mount cameras on a real bench:
`workspace` in front of the table looking down on it, and `side` across it, low, which sees
heights. They change nothing in the physics.

Meta-World draws some goal markers (reach, peg insertion, plate sliding, lever, dial, basketball,
coffee) in red, the arm's own colour, and a policy from pixels does not pick them out: on MT10
from images, reach stayed at the success of ignoring the goal while push and pick-place, with
the same puck and goals in the same region but green and blue, were learnt. Those markers are
drawn in magenta, a colour nothing else in the scenes has. Markers are visual only; states,
physics and the scripted experts are unchanged.

The module ends with Meta-World's `FAMILY` (`envs.family.EnvFamily`): the suite names, defaults,
the scripted expert and what a recording stores per step (observation, action as executed,
reward, the expert's procedure, a language-motion label and the MuJoCo state), which is all
`envs.make`, the recorder, evaluation and the CLI know of Meta-World.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import metaworld
import mujoco
import numpy as np

from envs.camera import CameraModel
from envs.family import (
    EnvFamily,
    Listing,
    Recording,
    RecordSpec,
    StepKey,
    UnknownNameError,
    unknown,
)
from envs.language_motion import VOCABULARY, MotionLabelling, label_steps
from envs.rendering import Renderer, RenderOptions
from envs.suite import TaskSuite
from envs.tracks import (
    GRASP_KEY,
    KEYPOINTS,
    TRACKS_ATTR,
    camera_attrs,
    project_keypoints,
    track_key,
    track_keys,
)

__all__ = [
    "ACTION_CONVENTION",
    "DIFFICULTY",
    "FAMILY",
    "INSTRUCTIONS",
    "MOTION_LABELLING",
    "TASKS",
    "MetaWorldEnv",
    "Suite",
    "SuiteTask",
    "UnknownNameError",
    "load_suite",
    "parse_obs",
]

TASKS: tuple[str, ...] = tuple(metaworld.env_dict.ALL_V3_ENVIRONMENTS)
"""All 50 Meta-World v3 task names."""

# Difficulty groups of Seo et al. 2022 (Masked World Models), as LeRobot's users know them.
DIFFICULTY: dict[str, tuple[str, ...]] = {
    "easy": (
        "button-press-v3", "button-press-topdown-v3", "button-press-topdown-wall-v3",
        "button-press-wall-v3", "coffee-button-v3", "dial-turn-v3", "door-close-v3",
        "door-lock-v3", "door-open-v3", "door-unlock-v3", "drawer-close-v3", "drawer-open-v3",
        "faucet-close-v3", "faucet-open-v3", "handle-press-v3", "handle-press-side-v3",
        "handle-pull-v3", "handle-pull-side-v3", "lever-pull-v3", "plate-slide-v3",
        "plate-slide-back-v3", "plate-slide-back-side-v3", "plate-slide-side-v3", "reach-v3",
        "reach-wall-v3", "window-close-v3", "window-open-v3", "peg-unplug-side-v3",
    ),
    "medium": (
        "basketball-v3", "bin-picking-v3", "box-close-v3", "coffee-pull-v3", "coffee-push-v3",
        "hammer-v3", "peg-insert-side-v3", "push-wall-v3", "soccer-v3", "sweep-v3",
        "sweep-into-v3",
    ),
    "hard": (
        "assembly-v3", "hand-insert-v3", "pick-out-of-hole-v3", "pick-place-v3", "push-v3",
        "push-back-v3",
    ),
    "very_hard": (
        "shelf-place-v3", "disassemble-v3", "stick-pull-v3", "stick-push-v3",
        "pick-place-wall-v3",
    ),
}  # fmt: skip

# One instruction per task, in the imperative a person would say to the robot.
INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "put the ring onto the peg",
    "basketball-v3": "pick up the ball and drop it into the hoop",
    "bin-picking-v3": "move the puck from the left bin into the right bin",
    "box-close-v3": "pick up the lid and close the box",
    "button-press-topdown-v3": "press the button down from above",
    "button-press-topdown-wall-v3": "press the button down from above, behind the wall",
    "button-press-v3": "push the button in from the front",
    "button-press-wall-v3": "reach past the wall and push the button in",
    "coffee-button-v3": "press the button on the coffee machine",
    "coffee-pull-v3": "pull the mug away from the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "turn the dial",
    "disassemble-v3": "lift the ring off the peg",
    "door-close-v3": "swing the door shut",
    "door-lock-v3": "turn the door lock down to lock it",
    "door-open-v3": "pull the door open by its handle",
    "door-unlock-v3": "turn the door lock to unlock it",
    "drawer-close-v3": "push the drawer closed",
    "drawer-open-v3": "pull the drawer open",
    "faucet-close-v3": "turn the faucet handle to close it",
    "faucet-open-v3": "turn the faucet handle to open it",
    "hammer-v3": "pick up the hammer and drive the nail into the wall",
    "hand-insert-v3": "move the gripper into the hole in the table",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "peg-insert-side-v3": "pick up the peg and insert it sideways into the hole",
    "peg-unplug-side-v3": "pull the peg out of the hole sideways",
    "pick-out-of-hole-v3": "pick the puck out of the hole and lift it to the goal",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "pick-place-wall-v3": "pick up the puck, lift it over the wall and place it at the goal",
    "plate-slide-back-side-v3": "slide the plate sideways out of the cabinet",
    "plate-slide-back-v3": "slide the plate back out of the cabinet",
    "plate-slide-side-v3": "slide the plate sideways into the cabinet",
    "plate-slide-v3": "slide the plate into the cabinet",
    "push-back-v3": "push the puck back to the goal",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck around the wall to the goal",
    "reach-v3": "move the gripper to the goal",
    "reach-wall-v3": "move the gripper over the wall to the goal",
    "shelf-place-v3": "pick up the puck and put it on the shelf",
    "soccer-v3": "push the ball into the goal",
    "stick-pull-v3": "grasp the stick and use it to pull the container to the goal",
    "stick-push-v3": "grasp the stick and use it to push the container to the goal",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-close-v3": "slide the window closed",
    "window-open-v3": "slide the window open",
}

BENCHMARKS = ("MT1", "MT10", "MT50", "ML1", "ML10", "ML45")
SUITES = (*BENCHMARKS, *DIFFICULTY)
PROPRIO_SIZE = 4
"""`proprio`: hand position (3) and gripper opening (1), the head of `state`: what a real arm
reports of itself, without the objects' poses and the goal that only a simulator knows."""
CAMERAS = (
    "topview",
    "corner",
    "corner2",
    "corner3",
    "corner4",
    "behindGripper",
    "gripperPOV",
    "workspace",
    "side",
)
ADDED_CAMERAS = {
    "workspace": {"pos": (0.5, 1.15, 0.5), "target": (0.0, 0.7, 0.08), "fovy": 45.0},
    "side": {"pos": (0.8, 0.65, 0.3), "target": (0.0, 0.7, 0.1), "fovy": 50.0},
}
"""The cameras added to every scene: where each stands, the point it looks at and its vertical
field of view in degrees. `workspace` looks down on the middle of the object and goal ranges from
in front of the table: at 84x84 a goal sphere is 3-4 pixels across instead of 1-2 from `corner`.
From that height a goal's height and its depth fall along nearly the same image direction, so
`side` looks across the table from its +x end, 30 cm above it, where height is the image's
vertical and depth its horizontal."""
TRACK_CAMERAS = ("corner", "corner2")
"""The two views motion tracks are recorded in by default: both see the gripper over the whole
workspace from either side of the table, so their rays cross at a wide angle."""
GRASP_SIGNAL = "the gripper is being closed: its last command (actuator control) above 0"
"""How a Meta-World recording reads its grasp bit (`envs.tracks`)."""
GOAL_MARKER_RGBA = (1.0, 0.0, 1.0, 1.0)
"""Magenta: the colour of goal markers that Meta-World draws in the arm's red."""
MAX_EPISODE_STEPS = 500
"""Default episode length: Meta-World's own."""
_SCENE_FIELDS_RESET_WRITES = ("body_pos", "body_quat", "site_pos", "site_quat", "eq_data")
"""`MjModel` fields Meta-World's `reset_model`s write (bodies and goal sites placed per
variation, the mocap weld), restored to their built values before every reset."""


def check_task(task: str) -> str:
    """The canonical task name (`-v3` may be left off), or a one-line error."""
    if task in TASKS:
        return task
    if f"{task}-v3" in TASKS:
        return f"{task}-v3"
    raise unknown("Meta-World task", task, TASKS)


@dataclass(frozen=True)
class SuiteTask:
    """One task of a suite with its fixed variations (Meta-World `Task`s, in benchmark order)."""

    name: str
    index: int
    """Position of the task in its suite: the task id for one-hot conditioning."""
    variations: tuple[metaworld.Task, ...]

    family: ClassVar[str] = "metaworld"

    @property
    def instruction(self) -> str:
        return INSTRUCTIONS[self.name]


@functools.lru_cache(maxsize=16)
def _benchmark(kind: str, task: str | None, seed: int) -> metaworld.Benchmark:
    if kind in ("MT1", "ML1"):
        return getattr(metaworld, kind)(task, seed=seed)
    return getattr(metaworld, kind)(seed=seed)


def _group_variations(tasks: Sequence[metaworld.Task], names: Sequence[str]) -> list[SuiteTask]:
    by_name: dict[str, list[metaworld.Task]] = {n: [] for n in names}
    for t in tasks:
        by_name[t.env_name].append(t)
    return [SuiteTask(n, i, tuple(by_name[n])) for i, n in enumerate(names)]


def load_suite_tasks(
    kind: str, split: str = "train", task: str | None = None, seed: int = 0
) -> list[SuiteTask]:
    """The tasks of a Meta-World benchmark or difficulty group with their variations."""
    if kind in DIFFICULTY:
        if split != "train":
            raise unknown(f"split for the {kind} group", split, ["train"])
        return [
            SuiteTask(name, i, load_suite_tasks("MT1", "train", name, seed)[0].variations)
            for i, name in enumerate(DIFFICULTY[kind])
        ]
    if kind not in BENCHMARKS:
        raise unknown("Meta-World suite", kind, SUITES)
    splits = ("train",) if kind.startswith("MT") else ("train", "test")
    if split not in splits:
        raise unknown(f"split for {kind}", split, splits)
    if kind in ("MT1", "ML1"):
        if task is None:
            raise UnknownNameError(f"{kind} needs a task, e.g. 'metaworld/{kind}/pick-place-v3'")
        task = check_task(task)
    bench = _benchmark(kind, task, seed)
    if kind == "ML1" and split == "test":
        # ML1's test tasks are other variations of the same task.
        return _group_variations(bench.test_tasks, [task])
    classes = bench.train_classes if split == "train" else bench.test_classes
    tasks = bench.train_tasks if split == "train" else bench.test_tasks
    return _group_variations(tasks, list(classes))


def _upright_cameras(model: mujoco.MjModel, data: mujoco.MjData) -> None:
    """Turn world-fixed cameras whose image 'up' points below the horizon by 180° about their
    optical axis, so every image shows the table the right way up."""
    mujoco.mj_forward(model, data)
    half_turn = np.array([0.0, 0.0, 0.0, 1.0])  # 180° about the camera's own z (view) axis
    for cam_id in range(model.ncam):
        if model.cam_bodyid[cam_id] != 0:
            continue  # cameras riding on the arm keep their mounting
        up_world = data.cam_xmat[cam_id].reshape(3, 3)[:, 1]
        if up_world[2] < 0:
            quat = np.empty(4)
            mujoco.mju_mulQuat(quat, model.cam_quat[cam_id].copy(), half_turn)
            model.cam_quat[cam_id] = quat
    mujoco.mj_forward(model, data)


def _look_at(pos: Sequence[float], target: Sequence[float]) -> np.ndarray:
    """Quaternion of a camera at `pos` looking at `target` with the image's up towards world +z
    (MuJoCo cameras look along their own -z with y up)."""
    back = np.asarray(pos, float) - np.asarray(target, float)
    back /= np.linalg.norm(back)
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, np.stack([right, up, back], axis=1).ravel())
    return quat


def _is_red_goal(name: str, rgba: np.ndarray) -> bool:
    r, g, b, a = rgba
    return "goal" in name.lower() and a > 0 and r > 0.5 and g < 0.2 and b < 0.2


@functools.cache
def _scene_class(cls: type) -> type:
    """`cls`, a Meta-World env class, whose scene is compiled with `ADDED_CAMERAS`
    and red goal markers drawn in `GOAL_MARKER_RGBA`.

    Meta-World builds its model from an XML file inside gymnasium's `_initialize_simulation`;
    compiling the same file through `MjSpec` with two more cameras gives the same bodies, joints
    and geoms in the same order, so physics, ids and the scripted experts are untouched.
    """

    def _initialize_simulation(self: Any) -> tuple[mujoco.MjModel, mujoco.MjData]:
        spec = mujoco.MjSpec.from_file(self.fullpath)
        for name, cam in ADDED_CAMERAS.items():
            spec.worldbody.add_camera(
                name=name,
                pos=cam["pos"],
                quat=_look_at(cam["pos"], cam["target"]),
                fovy=cam["fovy"],
            )
        for site in spec.sites:
            if _is_red_goal(site.name, site.rgba):
                site.rgba = GOAL_MARKER_RGBA
        model = spec.compile()
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
        return model, mujoco.MjData(model)

    return type(cls.__name__, (cls,), {"_initialize_simulation": _initialize_simulation})


class MetaWorldEnv(gym.Env):
    """A single Meta-World task with dict observations, fast cameras and seeded variations.

    `reset(seed=s)` plays variation `s mod n` (n = 50 for Meta-World's benchmarks), so seeds
    0..n-1 visit every variation once; `reset()` without a seed draws one from the env's RNG;
    `reset(options={"variation": k})` picks variation k directly. Episodes are deterministic given
    the variation and the actions.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}  # noqa: RUF012

    def __init__(
        self,
        task: str,
        variations: Sequence[metaworld.Task],
        *,
        obs: Sequence[str] = ("state",),
        image_size: int | tuple[int, int] = 84,
        max_episode_steps: int = MAX_EPISODE_STEPS,
        terminate_on_success: bool = False,
        render_mode: str | None = None,
        render_camera: str = "corner",
        render_size: int | tuple[int, int] | None = None,
        render_options: RenderOptions | None = None,
        task_index: int = 0,
        suite: str | None = None,
    ) -> None:
        task = check_task(task)
        if not variations:
            raise ValueError(f"{task}: no variations given")
        if max_episode_steps <= 0:
            raise ValueError(f"max_episode_steps must be positive, got {max_episode_steps}")
        self.task = task
        self.task_index = task_index
        self.suite = suite
        self.instruction = INSTRUCTIONS[task]
        self.variations = tuple(variations)
        self.max_episode_steps = int(max_episode_steps)
        self.terminate_on_success = terminate_on_success
        self.render_mode = render_mode
        self.render_camera = render_camera

        self.sim = _scene_class(metaworld.env_dict.ALL_V3_ENVIRONMENTS[task])()
        self.sim.max_path_length = self.max_episode_steps
        self.sim.set_task(self.variations[0])
        _upright_cameras(self.sim.model, self.sim.data)
        self._built_scene = {
            name: getattr(self.sim.model, name).copy() for name in _SCENE_FIELDS_RESET_WRITES
        }

        self.obs_keys = tuple(obs)
        self.cameras = tuple(k.split("/", 1)[1] for k in self.obs_keys if k.startswith("image/"))
        for key in self.obs_keys:
            if key not in ("state", "proprio") and not key.startswith("image/"):
                valid = ["state", "proprio", *(f"image/{c}" for c in CAMERAS)]
                raise unknown("observation key", key, valid)
        for cam in (*self.cameras, render_camera):
            if cam not in CAMERAS:
                raise unknown("camera", cam, CAMERAS)
        w, h = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.image_size = (int(w), int(h))
        rw, rh = (
            self.image_size
            if render_size is None
            else (render_size, render_size)
            if isinstance(render_size, int)
            else render_size
        )
        self.render_size = (int(rw), int(rh))
        self.render_options = render_options or RenderOptions()
        self._renderer = Renderer(self.sim.model, w, h, self.render_options)
        self._video_renderer = (
            self._renderer
            if self.render_size == self.image_size
            else Renderer(self.sim.model, rw, rh, self.render_options)
        )

        spaces: dict[str, gym.Space] = {}
        for key in self.obs_keys:
            if key == "state":
                space = self.sim.sawyer_observation_space
                spaces[key] = gym.spaces.Box(
                    space.low.astype(np.float32), space.high.astype(np.float32), dtype=np.float32
                )
            elif key == "proprio":
                space = self.sim.sawyer_observation_space
                spaces[key] = gym.spaces.Box(
                    space.low[:PROPRIO_SIZE].astype(np.float32),
                    space.high[:PROPRIO_SIZE].astype(np.float32),
                    dtype=np.float32,
                )
            else:
                spaces[key] = gym.spaces.Box(0, 255, (h, w, 3), dtype=np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), dtype=np.float32)
        self.variation: int | None = None
        self._steps = 0

    # --- gymnasium API -------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        if "variation" in options:
            variation = int(options["variation"])
            if not 0 <= variation < len(self.variations):
                raise ValueError(
                    f"variation {variation} out of range: {self.task} has "
                    f"{len(self.variations)} variations (0..{len(self.variations) - 1})"
                )
        elif seed is not None:
            # Seed s is variation s mod n: seeds 0..n-1 visit every variation once.
            variation = seed % len(self.variations)
        else:
            variation = int(self.np_random.integers(len(self.variations)))
        self.variation = variation
        self._restore_built_scene()
        self.sim.set_task(self.variations[variation])
        state, _ = self.sim.reset()
        self._steps = 0
        return self._observe(state), {"variation": variation, "task": self.task, "success": False}

    def step(
        self, action: np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self.variation is None:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (4,):
            raise ValueError(f"{self.task}: action must have shape (4,), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"{self.task}: action contains NaN or inf: {action}")
        state, reward, _, truncated, info = self.sim.step(np.clip(action, -1.0, 1.0))
        self._steps += 1
        success = bool(info.get("success", False))
        info = {**info, "success": success, "variation": self.variation, "task": self.task}
        terminated = self.terminate_on_success and success
        truncated = bool(truncated) or self._steps >= self.max_episode_steps
        return self._observe(state), float(reward), terminated, truncated, info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        return self._video_renderer.render(self.sim.data, self.render_camera)

    def close(self) -> None:
        self._renderer.close()
        self._video_renderer.close()
        self.sim.close()

    # --- cameras -------------------------------------------------------------------------------
    def render_camera_image(self, camera: str, size: tuple[int, int] | None = None) -> np.ndarray:
        """An upright RGB image of any scene camera, at the observation size by default."""
        if camera not in CAMERAS:
            raise unknown("camera", camera, CAMERAS)
        if size is None or tuple(size) == self.image_size:
            return self._renderer.render(self.sim.data, camera)
        if tuple(size) == self.render_size:
            return self._video_renderer.render(self.sim.data, camera)
        raise ValueError(f"size {size} is neither image_size nor render_size")

    def segmentation(self, camera: str) -> np.ndarray:
        """Per-pixel (object id, object type) at the observation size."""
        return self._renderer.segmentation(self.sim.data, camera)

    def camera_model(self, camera: str, size: tuple[int, int] | None = None) -> CameraModel:
        """Intrinsics and current extrinsics of `camera` at `size` (observation size by default)."""
        if camera not in CAMERAS:
            raise unknown("camera", camera, CAMERAS)
        w, h = size or self.image_size
        return CameraModel.from_mujoco(self.sim.model, self.sim.data, camera, w, h)

    # --- simulator state ---------------------------------------------------------------------
    _STATE_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION

    @property
    def sim_state_size(self) -> int:
        return int(mujoco.mj_stateSize(self.sim.model, self._STATE_SPEC))

    def get_sim_state(self) -> np.ndarray:
        """The full MuJoCo integration state (time, qpos, qvel, mocap, ...): storing it per step
        lets an episode be reset to any step and replayed exactly."""
        state = np.empty(self.sim_state_size, dtype=np.float64)
        mujoco.mj_getState(self.sim.model, self.sim.data, state, self._STATE_SPEC)
        return state

    def set_sim_state(self, state: np.ndarray) -> None:
        """Restore a state from `get_sim_state` (same task and variation). A longer vector
        whose tail is NaN (how a store of several tasks pads the smaller states) is accepted."""
        state = np.asarray(state, dtype=np.float64)
        n = self.sim_state_size
        if state.ndim == 1 and len(state) > n and np.isnan(state[n:]).all():
            state = state[:n]
        if state.shape != (self.sim_state_size,):
            raise ValueError(
                f"sim state must have shape ({self.sim_state_size},), got {state.shape}"
            )
        mujoco.mj_setState(self.sim.model, self.sim.data, state, self._STATE_SPEC)
        mujoco.mj_forward(self.sim.model, self.sim.data)
        # Meta-World keeps the previous frame outside the physics state; after any step it is
        # the frame the state was taken at.
        self.sim._prev_obs = self.sim._get_curr_obs_combined_no_goal()

    @contextlib.contextmanager
    def lookahead(self) -> Iterator[None]:
        """Steps taken inside are undone on leaving: the physics, the step counters and the
        frames Meta-World keeps outside the physics state, so an oracle can try what an expert
        would do from here (a simulated person's motion label) without the episode noticing."""
        sim = self.sim
        kept = (
            self.get_sim_state(),
            self._steps,
            sim.curr_path_length,
            sim._last_stable_obs,
            sim._did_see_sim_exception,
            sim._prev_obs.copy(),
            sim.max_path_length,
        )
        sim.max_path_length = 2**31  # a look past the episode's last step is still a look
        try:
            yield
        finally:
            state, self._steps, sim.curr_path_length, stable, unstable, previous, limit = kept
            self.set_sim_state(state)
            sim._last_stable_obs, sim._did_see_sim_exception = stable, unstable
            sim._prev_obs, sim.max_path_length = previous, limit

    # --- helpers -------------------------------------------------------------------------------
    def _restore_built_scene(self) -> None:
        """Put the simulator back as it was built, so that an episode never depends on the ones
        before it.

        Meta-World's reset reads the simulator it finds: it runs `reset_model` once on the
        previous episode's final state (a puck left where the last episode pushed it), and only
        then resets the data and runs it again. The first pass moves model fields (a push goal
        site's height is read from the object's height), and a site moved after the last forward
        pass keeps a stale world position, which the first frame renders. In a reused env that
        frame differed from a new env's by a few pixels, so a resumed recording was not the
        recording it resumed. The model fields reset writes and the whole of `MjData` are
        restored here instead, which makes every reset start where a new env's first one does.
        """
        model = self.sim.model
        for name, built in self._built_scene.items():
            getattr(model, name)[...] = built
        mujoco.mj_resetData(model, self.sim.data)

    @property
    def model(self) -> mujoco.MjModel:
        return self.sim.model

    @property
    def data(self) -> mujoco.MjData:
        return self.sim.data

    def _observe(self, state: np.ndarray) -> dict[str, np.ndarray]:
        obs: dict[str, np.ndarray] = {}
        for key in self.obs_keys:
            if key == "state":
                obs[key] = np.asarray(state, dtype=np.float32)
            elif key == "proprio":
                obs[key] = np.asarray(state[:PROPRIO_SIZE], dtype=np.float32)
            else:
                obs[key] = self._renderer.render(self.sim.data, key[6:])
        return obs


def _make_env(task: SuiteTask, suite: str | None, kwargs: dict[str, Any]) -> MetaWorldEnv:
    return MetaWorldEnv(task.name, task.variations, task_index=task.index, suite=suite, **kwargs)


@dataclass(frozen=True)
class Suite(TaskSuite):
    """A list of tasks with fixed variations: a Meta-World benchmark split or a difficulty group."""

    tasks: tuple[SuiteTask, ...]

    build_env = staticmethod(_make_env)

    def matches(self, task: SuiteTask, name: str) -> bool:
        return task.name == name or task.name == f"{name}-v3"

    def task_not_found(self, name: str) -> Exception:
        return unknown(f"task of {self.name}", name, self.task_names)

    def variation_count(self, task: SuiteTask) -> int:
        return len(task.variations)


def load_suite(kind: str, split: str = "train", task: str | None = None, seed: int = 0) -> Suite:
    """A suite by its short name (`MT10`, `ML45`, `easy`, `MT1` with `task`, ...)."""
    tasks = load_suite_tasks(kind, split, task, seed)
    name = f"metaworld/{kind}" + (f"/{task}" if task else "")
    return Suite(name=name, split=split, tasks=tuple(tasks), task_seed=seed)


# --- the family: what envs.make/suite, recording, evaluation and `il envs` read ---------------

ACTION_CONVENTION = {
    "type": "ee_delta",
    "names": ["x", "y", "z", "gripper"],
    "units": ["cm", "cm", "cm", "1"],
    "low": [-1.0, -1.0, -1.0, -1.0],
    "high": [1.0, 1.0, 1.0, 1.0],
    "frame": "world",
    "gripper": "+1 closes, -1 opens",
    "note": "x, y, z in [-1, 1]: hand displacement of 1 cm per unit per step; the last "
    "dimension is the grab effort",
}
"""How to read an action, in the JSON form of `robots.action.ActionSpec` (envs does not import
robots): a recording's `action` attributes, and what the simulated arm accepts."""


def parse_obs(obs: str | None) -> tuple[str, ...]:
    """Observation keys from comma-separated `--obs` text (None: `state`), or a one-line
    error naming the closest valid keys."""
    keys = tuple(k.strip() for k in (obs or "state").split(",") if k.strip())
    valid = ["state", "proprio", *(f"image/{c}" for c in CAMERAS)]
    for k in keys:
        if k not in valid:
            raise unknown("observation key", k, valid)
    if not keys:
        raise ValueError("--obs needs at least one key, e.g. state,image/corner")
    return keys


def _suite(rest: str, split: str = "train", seed: int = 0) -> Suite:
    """`MT10`, `ML1/<task>`, `easy`, or a task alone (its MT1 benchmark) → the suite."""
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


def _make(rest: str, *, task_seed: int = 0, **kwargs: Any) -> MetaWorldEnv:
    """A task (`pick-place-v3`, `-v3` may be left off) → its env, with the variations of its
    MT1 benchmark under `task_seed`."""
    if rest.split("/", 1)[0] in SUITES:
        name = f"metaworld/{rest}"
        raise UnknownNameError(
            f"{name!r} is a suite, not a single env; use envs.make_vec({name!r}) or "
            f"envs.suite({name!r}).make(task)"
        )
    task = check_task(rest)
    return load_suite("MT1", "train", task, task_seed).make(task, **kwargs)


def _make_vec(
    rest: str,
    *,
    envs_per_task: int,
    vectorization_mode: str,
    split: str,
    task_seed: int,
    **kwargs: Any,
) -> gym.vector.VectorEnv:
    # A task alone is its MT1 benchmark, whose only split is train, whatever `split` says.
    if rest in TASKS or f"{rest}-v3" in TASKS:
        chosen = load_suite("MT1", "train", check_task(rest), task_seed)
    else:
        chosen = _suite(rest, split, task_seed)
    return chosen.make_vec(envs_per_task, vectorization_mode, **kwargs)


def _expert(task: SuiteTask) -> Any:
    # Imported here: envs.experts builds on this module (and imports Meta-World's policies).
    from envs.experts import FamilyExpert

    return FamilyExpert(task.name)


_PROCEDURE_KEYS = {
    "procedure/hand": StepKey(
        (3,), "float32", "hand position the expert parsed from the state (m)"
    ),
    "procedure/object": StepKey((3,), "float32", "main object position the expert parsed (m)"),
    "procedure/goal": StepKey((3,), "float32", "goal position (m)"),
    "procedure/phase": StepKey(
        (), "int16", "index of the expert's phase; names in attrs phases[task]"
    ),
    "procedure/target": StepKey((3,), "float32", "position the expert moves the hand toward (m)"),
    "procedure/grab_effort": StepKey((), "float32", "the expert's grab effort"),
}
"""The expert's procedure as stored per step (`envs.experts.FamilyExpert`)."""


MOTION_LABELLING = MotionLabelling(
    hand="procedure/hand", gripper="obs/state", gripper_column=3, gripper_signal="opening"
)
"""Language motions of an expert recording: the hand the expert parsed and the gripper opening
(state[3]), over the next 4 steps, at Meta-World's scale (`envs.language_motion`)."""


def _recording(suite: Suite, spec: RecordSpec) -> Recording:
    """Every step: the observation (always with `state`, which the expert and the
    language-motion labels read), the action as executed, the dense reward, success, the
    expert's procedure, a language-motion label and the full MuJoCo state, so one recording
    serves every method."""
    from envs.experts import ScriptedExpert  # see _expert

    obs = spec.obs if "state" in spec.obs else ("state", *spec.obs)
    sim_state_sizes = {}
    cameras: tuple[CameraModel, ...] = ()
    names = TRACK_CAMERAS if spec.track_cameras is None else spec.track_cameras
    if spec.human_proxy is not None:
        if not names:
            raise ValueError("a human-proxy recording is its two cameras' views: give --tracks")
        obs = ("state",)  # what the expert reads; the proxy keeps none of it
    for name in suite.task_names:
        probe = suite.make(name, obs=("state",))
        sim_state_sizes[name] = probe.sim_state_size
        if names and not cameras:
            cameras = track_cameras(names, spec.image_size, probe)
        probe.close()
    state_size = max(sim_state_sizes.values())
    keys: dict[str, StepKey] = {}
    for key in obs:
        if key == "state":
            keys["obs/state"] = StepKey((39,), "float32", "Meta-World state (hand, gripper, ...)")
        elif key == "proprio":
            keys["obs/proprio"] = StepKey((4,), "float32", "hand position (m) and gripper opening")
        else:
            camera = key.split("/", 1)[1]
            keys[f"obs/{key}"] = StepKey(
                (spec.image_size, spec.image_size, 3), "uint8", f"RGB from camera {camera}"
            )
    if spec.action_noise > 0:
        keys["action"] = StepKey(
            (4,), "float32", "expert action, clipped to [-1, 1]: the label to imitate"
        )
        keys["executed_action"] = StepKey(
            (4,),
            "float32",
            f"action the env executed: the expert's plus Gaussian noise (std "
            f"{spec.action_noise:g}), clipped to [-1, 1]",
        )
    else:
        keys["action"] = StepKey(
            (4,), "float32", "expert action as executed, clipped to [-1, 1] (see attrs action)"
        )
    keys["reward"] = StepKey((), "float32", "Meta-World v3 dense reward after the action")
    keys["success"] = StepKey((), "bool", "task solved after the action")
    keys.update(_PROCEDURE_KEYS)
    keys["language_motion"] = StepKey(
        (), "int16", "index into attrs source.language_motion_vocabulary"
    )
    for name, (shape, dtype, description) in track_keys(cameras, GRASP_SIGNAL).items():
        keys[name] = StepKey(shape, dtype, description)
    keys["sim_state"] = StepKey(
        (state_size,),
        "float64",
        "MuJoCo integration state before the action; tasks with a smaller state fill the tail "
        "with NaN (sizes in attrs source.sim_state_sizes)",
    )
    source = {
        "image_size": spec.image_size,
        "max_episode_steps": spec.max_episode_steps,
        "steps_after_success": spec.steps_after_success,
        "action_noise": spec.action_noise,
        "metaworld_version": metaworld.__dict__.get("__version__", _dist_version("metaworld")),
        "mujoco_version": mujoco.__version__,
        "phases": {t.name: list(ScriptedExpert(t.name).phases) for t in suite.tasks},
        "sim_state_sizes": sim_state_sizes,
        "language_motion_vocabulary": list(VOCABULARY),
        "language_motion_labels": MOTION_LABELLING.to_json(),
    }
    if cameras:
        source[TRACKS_ATTR] = camera_attrs(cameras, GRASP_SIGNAL)
    if spec.human_proxy is not None:
        return _human_proxy_recording(keys, source, cameras, spec, state_size)
    return Recording(
        obs=obs,
        keys=keys,
        source=source,
        step_labels=functools.partial(_step_labels, size=state_size, cameras=cameras),
        episode_labels=functools.partial(_language_motion, MOTION_LABELLING),
    )


def _human_proxy_recording(
    keys: dict[str, StepKey],
    source: dict[str, Any],
    cameras: tuple[CameraModel, ...],
    spec: RecordSpec,
    state_size: int,
) -> Recording:
    """What a human-proxy recording stores (`envs.human_proxy`): each camera's view rendered
    again as the proxy looks, the keypoints as a hand tracker reports them, a grasp bit read
    from the images, and success; nothing of the robot."""
    proxy = spec.human_proxy
    kept = {
        f"obs/image/{c.name}": StepKey(
            (c.height, c.width, 3), "uint8", f"RGB from camera {c.name}, as the proxy video looks"
        )
        for c in cameras
    }
    whose = "the gripper's points as a hand tracker reports them (distorted as a hand, noisy)"
    for name, (shape, dtype, description) in track_keys(cameras, _PROXY_GRASP, whose).items():
        kept[name] = StepKey(shape, dtype, description)
    kept["success"] = keys["success"]
    source = {
        k: v
        for k, v in source.items()
        if k not in ("language_motion_vocabulary", "language_motion_labels", "sim_state_sizes")
    }
    source[TRACKS_ATTR] = camera_attrs(cameras, _PROXY_GRASP)
    source["human_proxy"] = dataclasses.asdict(proxy)
    return Recording(
        obs=("state",),
        keys=kept,
        source=source,
        step_labels=functools.partial(_step_labels, size=state_size, cameras=()),
        finish=functools.partial(_human_proxy_episode, cameras=cameras, proxy=proxy),
        episode_source="human",
    )


_PROXY_GRASP = (
    "from the images, never the gripper: both fingertips near the object's mask (a segmentation "
    "render) in either view, for several frames in a row (attrs source.human_proxy)"
)
_GRIPPER_BODIES = ("hand", "rightclaw", "rightpad", "leftclaw", "leftpad")
_DISTRACTOR_TEXTURES = ("T_floor", "T_wallmetal")


def _paint(model: mujoco.MjModel, name: str, pattern: Any) -> None:
    """Overwrite texture `name` with `pattern(width, height, channels)`; the renderer made
    after this uploads it (textures go to the GL context when it is created)."""
    texture = model.texture(name)
    w, h, c = int(texture.width[0]), int(texture.height[0]), int(texture.nchannel[0])
    start = int(model.tex_adr[texture.id])
    model.tex_data[start : start + w * h * c] = pattern(w, h, c).ravel()


def _human_proxy_episode(
    env: Any,
    arrays: dict[str, np.ndarray],
    seed: int,
    *,
    cameras: tuple[CameraModel, ...],
    proxy: Any,
) -> dict[str, np.ndarray]:
    """The episode's views, keypoints and grasp bits as a person's video would give them,
    replayed from its sim states (`envs.human_proxy`)."""
    from envs.human_proxy import checkerboard, distort_keypoints, grasp_from_masks

    unwrapped = getattr(env, "unwrapped", env)
    sim = unwrapped.sim
    model = sim.model
    appearance = proxy.appearance
    body_of = model.geom_bodyid
    gripper = np.isin(body_of, [model.body(n).id for n in _GRIPPER_BODIES])
    table = body_of == model.body("tablelink").id
    objects = _object_geoms(model)
    saved = model.geom_rgba.copy(), model.geom_matid.copy(), model.tex_data.copy()
    size = cameras[0].width
    renderer = Renderer(model, size, size)
    images: dict[str, list[np.ndarray]] = {c.name: [] for c in cameras}
    masks: dict[str, list[np.ndarray]] = {c.name: [] for c in cameras}
    points = []
    try:
        model.geom_rgba[gripper] = appearance.gripper_rgba
        model.geom_rgba[table] = appearance.table_rgba
        model.geom_matid[gripper | table] = -1  # a material's colour would win over the rgba
        if appearance.distractors:
            for name in _DISTRACTOR_TEXTURES:
                _paint(model, name, checkerboard)
        for state in arrays["sim_state"]:
            unwrapped.set_sim_state(state)
            points.append(gripper_keypoints(sim))
            for c in cameras:
                images[c.name].append(renderer.render(sim.data, c.name))
                seen = renderer.segmentation(sim.data, c.name)
                masks[c.name].append(
                    (seen[..., 1] == mujoco.mjtObj.mjOBJ_GEOM)
                    & objects[np.maximum(seen[..., 0], 0)]
                    & (seen[..., 0] >= 0)
                )
    finally:
        model.geom_rgba[:], model.geom_matid[:], model.tex_data[:] = saved
        renderer.close()
    rng = np.random.default_rng([seed, 11])
    hand = distort_keypoints(np.stack(points), proxy)
    out: dict[str, np.ndarray] = {"success": arrays["success"]}
    grasp = np.zeros(len(hand), dtype=bool)
    for c in cameras:
        pixels = c.project(hand) + rng.normal(0.0, proxy.noise_px, (len(hand), len(KEYPOINTS), 2))
        out[f"obs/image/{c.name}"] = np.stack(images[c.name])
        out[track_key(c.name)] = pixels.astype(np.float32)
        grasp |= grasp_from_masks(
            pixels[:, [1, 3]], np.stack(masks[c.name]), proxy.grasp_radius_px, proxy.grasp_frames
        )
    out[GRASP_KEY] = grasp
    return out


def _object_geoms(model: mujoco.MjModel) -> np.ndarray:
    """(ngeom,) bool: geoms of what the task moves — bodies that can move (a joint on the way
    to the world) and are not the arm."""
    parent = model.body_parentid
    arm_root = model.body("right_arm_base_link").id
    movable = np.zeros(model.nbody, dtype=bool)
    arm = np.zeros(model.nbody, dtype=bool)
    for b in range(model.nbody):
        a = b
        while a != 0:
            movable[b] |= model.body_jntnum[a] > 0
            arm[b] |= a == arm_root
            a = parent[a]
    return (movable & ~arm)[model.geom_bodyid]


def _step_labels(
    env: MetaWorldEnv, size: int, cameras: tuple[CameraModel, ...]
) -> dict[str, np.ndarray]:
    """The env's sim state in the suite-wide length, NaN after its own end (`set_sim_state`
    drops the NaN tail), and the gripper's motion-track points in each of `cameras`."""
    env = getattr(env, "unwrapped", env)
    state = env.get_sim_state()
    out = np.full(max(size, len(state)), np.nan)
    out[: len(state)] = state
    labels = {"sim_state": out}
    if cameras:
        pixels = project_keypoints(cameras, gripper_keypoints(env.sim))
        for camera, uv in zip(cameras, pixels, strict=True):
            labels[track_key(camera.name)] = uv.astype(np.float32)
        labels[GRASP_KEY] = np.bool_(env.sim.data.ctrl[0] > 0)
    return labels


def gripper_keypoints(sim: Any) -> np.ndarray:
    """The Sawyer gripper's five motion-track points in world coordinates, (5, 3) in the order
    of `envs.tracks.KEYPOINTS`: the centre between the fingertips (Meta-World's
    `tcp_center`), each fingertip (the end-effector sites) and each finger pad's origin, 4.5 cm
    further up the finger."""
    data = sim.data
    return np.stack(
        [
            np.asarray(sim.tcp_center, dtype=np.float64),
            data.site("leftEndEffector").xpos,
            data.body("leftpad").xpos,
            data.site("rightEndEffector").xpos,
            data.body("rightpad").xpos,
        ]
    ).astype(np.float64)


def track_cameras(
    names: Sequence[str], image_size: int, probe: MetaWorldEnv
) -> tuple[CameraModel, ...]:
    """The models of the cameras tracks are recorded in, at the recording's image size (the
    cameras stand still and are the same in every task's scene)."""
    unknown_names = [n for n in names if n not in CAMERAS]
    if unknown_names:
        raise unknown("Meta-World camera", unknown_names[0], CAMERAS)
    if len(names) == 1:
        raise ValueError("motion tracks need two cameras (or none), got one: " + names[0])
    sim = probe.unwrapped.sim
    return tuple(
        CameraModel.from_mujoco(sim.model, sim.data, name, image_size, image_size) for name in names
    )


def _language_motion(labelling: MotionLabelling, steps: Any) -> dict[str, np.ndarray]:
    """Each step's language-motion label, from the hand's motion over the next few steps."""
    return {"language_motion": label_steps(steps, labelling)}


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


_SUITE_SIZES = {"MT10": "10", "MT50": "50", "ML10": "10 + 5", "ML45": "45 + 5"}


def _suite_row(kind: str) -> tuple[str, str, str]:
    """(name, tasks, splits) of one suite for `il envs`."""
    if kind in ("MT1", "ML1"):
        return f"metaworld/{kind}/<task>", "1", "train" if kind == "MT1" else "train,test"
    if kind in DIFFICULTY:
        return f"metaworld/{kind}", str(len(DIFFICULTY[kind])), "train"
    splits = "train" if kind.startswith("MT") else "train,test"
    return f"metaworld/{kind}", _SUITE_SIZES[kind], splits


FAMILY = EnvFamily(
    name="metaworld",
    example="metaworld/reach-v3",
    obs_keys=("state",),
    max_episode_steps=MAX_EPISODE_STEPS,
    fps=float(MetaWorldEnv.metadata["render_fps"]),
    action_convention=ACTION_CONVENTION,
    suite=_suite,
    make=_make,
    parse_obs=parse_obs,
    expert=_expert,
    recording=_recording,
    listing=Listing(
        title="Meta-World suites",
        suites=tuple(_suite_row(kind) for kind in SUITES),
        notes=(
            ("tasks", ", ".join(f"metaworld/{t}" for t in TASKS)),
            ("cameras", ", ".join(CAMERAS)),
            ("observations", "state, proprio, image/<camera>"),
        ),
    ),
    env_names=tuple(f"metaworld/{t}" for t in TASKS),
    suite_names=tuple(f"metaworld/{s}" for s in SUITES),
    make_vec=_make_vec,
    video_options={"render_options": RenderOptions(antialias=True)},
    track_cameras=TRACK_CAMERAS,
    motion_labels=MOTION_LABELLING,
)
"""Meta-World as an env family (`envs.family.EnvFamily`)."""
