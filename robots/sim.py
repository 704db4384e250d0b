"""The simulated Meta-World arm as a `Robot`, and its scene cameras as `Camera`s.

With these, `il record --robot`, `il deploy` and `il replay` run end to end in MuJoCo through
exactly the code that drives a real arm: the fixed-rate loop, the safety filter, cameras read
from background threads with capture timestamps. The arm advances one Meta-World step (12.5 ms
of simulated time) per command, as in the data policies are trained on; run the loop at the
arm's `fps` (80 Hz) and simulated time keeps pace with the wall clock.

Cameras render from a copy of the simulator state taken under the arm's lock, so a frame is
always one consistent physical instant, and rendering (milliseconds) never holds up a command.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

import mujoco
import numpy as np

import envs
from envs.metaworld import ACTION_CONVENTION, CAMERAS, MetaWorldEnv, gripper_keypoints
from robots.base import ActionSpec, CameraIntrinsics, DriverError, Frame, Robot, ThreadedCamera

__all__ = ["SIM_SAFETY", "SimArm", "SimCamera"]

SIM_PREFIX = "sim:"
STEP_SECONDS = 0.0125
# The simulated arm's limits (configs/robots/safety.yaml explains each): the table's box, the
# action bounds per step, 1 m/s; no watchdog, since the simulated arm only moves when stepped.
SIM_SAFETY: dict[str, Any] = {
    "workspace_low": [-0.5, 0.35, -0.10],
    "workspace_high": [0.5, 0.95, 0.35],
    "max_step": [1.0, 1.0, 1.0, 1.0],
    "max_speed": 1.0,
    "watchdog_periods": None,
}


class SimArm(Robot):
    """Meta-World's Sawyer arm in MuJoCo.

    Action convention (Meta-World's own): end-effector displacement of the mocap target in cm per
    step along the world axes, each in [-1, 1], and the gripper effort in [-1, 1] (+1 closes).
    Observation: "state" (Meta-World's 39-d state), "ee_pos" (m), "ee_setpoint" (the mocap
    target the hand is pulled toward, m), "gripper" (opening, 0..1), "gripper_points" (5, 3:
    the gripper's motion-track points, `envs.metaworld.gripper_keypoints`),
    "success" (1.0 once the task's success test holds), "timestamp".
    """

    def __init__(self, env: str, *, seed: int = 0, task_seed: int = 0) -> None:
        self.env_name = env
        self.name = f"{SIM_PREFIX}{env}"
        self.seed = int(seed)
        self.task_seed = int(task_seed)
        self.lock = threading.RLock()
        """Held while the simulator state changes; cameras copy the state under it."""
        self._env: MetaWorldEnv | None = None
        self._state: np.ndarray | None = None
        self._success = False
        self._episodes = 0
        self._gripper = -1.0
        # the arm takes what the env takes, so a policy trained in sim runs on it unchanged
        spec = ActionSpec.from_json(ACTION_CONVENTION)
        assert spec is not None
        self._spec = spec

    # --- Robot ---------------------------------------------------------------------------------
    @property
    def action_spec(self) -> ActionSpec:
        return self._spec

    @property
    def observation_shapes(self) -> dict[str, tuple[int, ...]]:
        return {
            "state": (39,),
            "ee_pos": (3,),
            "ee_setpoint": (3,),
            "gripper": (1,),
            "gripper_points": (5, 3),
            "success": (1,),
        }

    @property
    def fps(self) -> float:
        return 1.0 / self.dt

    @property
    def dt(self) -> float:
        """Simulated seconds per command: Meta-World's 5 physics steps of 2.5 ms (read from the
        model once connected)."""
        if self._env is None:
            return STEP_SECONDS
        return float(self._env.sim.model.opt.timestep * self._env.sim.frame_skip)

    @property
    def env(self) -> MetaWorldEnv:
        if self._env is None:
            raise DriverError(f"{self.name} is not connected; call connect() or use `with`")
        return self._env

    @property
    def task(self) -> str:
        return self.env.task

    @property
    def instruction(self) -> str:
        return self.env.instruction

    @property
    def is_connected(self) -> bool:
        return self._env is not None

    def connect(self) -> None:
        if self._env is not None:
            return
        try:
            env = envs.make(self.env_name, task_seed=self.task_seed)
        except ValueError as e:  # unknown task or suite: the env's own one-line message
            raise DriverError(f"{self.name}: {e}") from None
        # Episodes end when the operator or the caller says so, never by a step count.
        env.max_episode_steps = env.sim.max_path_length = 2**62
        self._env = env
        self.home()
        self._episodes = 0  # the first episode plays the scene the arm connected in

    def disconnect(self) -> None:
        with self.lock:
            env, self._env = self._env, None
        if env is not None:
            env.close()

    def home(self, seed: int | None = None) -> int:
        """Start a new episode: a fresh scene (the variation of `seed`, by default the next one),
        the arm at its start pose."""
        with self.lock:
            if seed is None:
                seed = self.seed + self._episodes
            self._episodes += 1
            obs, _ = self.env.reset(seed=seed)
            self._state = obs["state"]
            self._success = False
            self._gripper = -1.0
            return int(seed)

    def hold(self) -> np.ndarray:
        """Stay put and keep the grip: a zero grab effort would drop what the hand holds."""
        return np.array([0.0, 0.0, 0.0, self._gripper])

    def observe(self) -> dict[str, Any]:
        with self.lock:
            if self._state is None:
                raise DriverError(f"{self.name} is not connected; call connect() or use `with`")
            state = self._state.copy()
            setpoint = self.env.sim.data.mocap_pos[0].copy()
            points = gripper_keypoints(self.env.sim)
            stamp = time.time()
            success = self._success
        return {
            "state": state,
            "ee_pos": state[:3].astype(np.float64),
            "ee_setpoint": setpoint,
            "gripper": state[3:4].astype(np.float64),
            "gripper_points": points,
            "success": np.array([float(success)]),
            "timestamp": stamp,
        }

    def command(self, action: np.ndarray) -> np.ndarray:
        action = self.checked_action(action)
        sent = np.clip(action, self._spec.low, self._spec.high)
        with self.lock:
            env = self.env
            obs, _, _, _, info = env.step(sent)
            self._state = obs["state"]
            self._success = self._success or bool(info["success"])
            self._gripper = float(sent[3])
        return sent

    def identity(self) -> dict[str, Any]:
        return {
            "robot": self.name,
            "driver": type(self).__name__,
            "env": self.env_name,
            "task": self._env.task if self._env is not None else None,
            "task_seed": self.task_seed,
            "mujoco": mujoco.__version__,
        }

    def safety_defaults(self) -> dict[str, Any]:
        return dict(SIM_SAFETY)

    def camera(self, name: str, **kwargs: Any) -> SimCamera:
        """One of the scene's cameras as a `Camera` bound to this arm."""
        return SimCamera(self, name, **kwargs)


class SimCamera(ThreadedCamera):
    """A scene camera of a `SimArm`, rendered at `fps` by a background thread.

    With `depth`, each frame also carries the depth image a depth camera at the same place
    would see (metres along the optical axis, the far clipping plane where nothing is in view),
    rendered from the same snapshot as the colour, so the two always show the same instant."""

    def __init__(
        self,
        arm: SimArm,
        camera: str = "corner",
        *,
        size: int = 84,
        fps: float = 30.0,
        depth: bool = False,
    ) -> None:
        if camera not in CAMERAS:
            raise DriverError(f"unknown camera {camera!r}; the scene has {', '.join(CAMERAS)}")
        super().__init__(fps)
        self.arm = arm
        self.name = camera
        self.size = int(size)
        self.depth = bool(depth)
        self._renderer: envs.Renderer | None = None
        self._next = 0.0
        self._index = 0

    @property
    def has_depth(self) -> bool:
        return self.depth

    @property
    def intrinsics(self) -> CameraIntrinsics:
        env = self.arm.env
        model = envs.CameraModel.from_mujoco(
            env.sim.model, env.sim.data, self.name, self.size, self.size
        )
        K = model.K
        return CameraIntrinsics(
            self.size, self.size, float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
        )

    @property
    def extrinsics(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The scene camera's pose, exact: the simulator is its own calibration (unless the
        setup gives one, to try a miscalibrated camera)."""
        if self._extrinsics is not None:
            return self._extrinsics
        env = self.arm.env
        model = envs.CameraModel.from_mujoco(
            env.sim.model, env.sim.data, self.name, self.size, self.size
        )
        return model.R, model.t

    def _open(self) -> None:
        self.arm.env  # noqa: B018 (raises if the arm is not connected)
        self._next = time.monotonic()
        self._index = 0

    def _close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def _capture(self) -> Frame:
        # Frames on a fixed schedule, as a real camera delivers them.
        delay = self._next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self._next = max(self._next + 1.0 / self.fps, time.monotonic())
        arm = self.arm
        with arm.lock:
            env = arm.env
            snapshot = copy.copy(env.sim.data)  # positions included: no mj_forward needed
            stamp = time.time()
        if self._renderer is None:  # the GL context belongs to the thread that renders
            self._renderer = envs.Renderer(env.sim.model, self.size, self.size)
        color = self._renderer.render(snapshot, self.name)
        depth = self._renderer.depth(snapshot, self.name) if self.depth else None
        index, self._index = self._index, self._index + 1
        return Frame(color=color, timestamp=stamp, index=index, depth=depth)
