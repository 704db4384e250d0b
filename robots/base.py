"""The three interfaces every driver implements: `Robot`, `Camera` and `Teleop`.

Record, deploy, replay and fine-tune are written against these and nothing else, so the
simulated arm and a real one are driven by the same code. Every reading carries the wall-clock
time at which it was captured (`time.time()`, seconds), taken as close to the hardware as the
backend can: a timestamp added later, by whoever happened to read the value, would make
observation and action look better aligned than they were.
"""

from __future__ import annotations

import abc
import enum
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robots.action import ActionSpec

__all__ = [
    "ActionSpec",
    "Camera",
    "CameraIntrinsics",
    "ConnectionLost",
    "DriverCrashed",
    "DriverError",
    "Frame",
    "Robot",
    "StaleFrameError",
    "Teleop",
    "TeleopEvent",
    "TeleopState",
    "ThreadedCamera",
    "camera_name",
    "square_crop",
    "square_intrinsics",
    "teleop_action",
    "to_robot_action",
    "vendor_library",
]


class DriverError(RuntimeError):
    """A device that cannot be used as asked; the message says what to do."""


class ConnectionLost(DriverError):
    """The device stopped answering mid-session (cable, power, network, controller stop).

    A driver raises it from `observe` or `command` once it knows the link is gone; the session
    then stops the loop, keeps or discards the episode in flight as the user chose, and reports
    this one line."""


class DriverCrashed(ConnectionLost):
    """The process that ran a device's vendor library died (SIGSEGV, SIGABRT, ...) or stopped
    answering, and the device's connection went with it (see `robots.vendor_process`).

    A `ConnectionLost`, so a session ends the same way as for a pulled cable. `signal` names
    the signal that ended the process ("SIGSEGV"), None when it hung or exited by itself."""

    def __init__(self, message: str, signal: str | None = None) -> None:
        super().__init__(message)
        self.signal = signal

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (str(self), self.signal)


def vendor_library(module: str, extra: str, device: str) -> Any:
    """Import a device's vendor library, or say in one line which extra installs it.

    Backends call this when they connect, not at import, so `robots` imports on a machine
    without any hardware library."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise DriverError(
            f"{device} needs the `{module}` library: pip install 'il[{extra}]' ({e})"
        ) from None


class StaleFrameError(DriverError):
    """The newest frame is older than the caller allows (the camera stalled or disconnected)."""


class Robot(abc.ABC):
    """An arm (with its gripper): observe its state, command an action.

    Use it as a context manager, or call `connect()`/`disconnect()`; `disconnect()` must leave
    the arm holding still and is safe to call twice.
    """

    name: str = "robot"

    @property
    @abc.abstractmethod
    def action_spec(self) -> ActionSpec:
        """The action convention and bounds `command` accepts."""

    @property
    @abc.abstractmethod
    def observation_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of every array `observe()` returns (apart from timestamps)."""

    @property
    def fps(self) -> float:
        """The rate the robot is meant to be commanded at, if it has one (0 if it has none)."""
        return 0.0

    @abc.abstractmethod
    def connect(self) -> None: ...

    @abc.abstractmethod
    def disconnect(self) -> None: ...

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool: ...

    @abc.abstractmethod
    def observe(self) -> dict[str, Any]:
        """Joint / end-effector state as float arrays, plus "timestamp": the capture time."""

    @abc.abstractmethod
    def command(self, action: np.ndarray) -> np.ndarray:
        """Send one action; returns the action actually sent (after the robot's own limits)."""

    def home(self, seed: int | None = None) -> int | None:
        """Prepare a new episode. A real arm does nothing here (the operator sets the scene up);
        a simulated one resets its scene, to the variation of `seed` if given, and returns the
        seed it used so the episode can be replayed in the same scene."""
        return None

    def hold(self) -> np.ndarray:
        """The action that keeps the arm where it is (zero delta, or the current pose); what the
        safety filter sends instead of a rejected command."""
        spec = self.action_spec
        if spec.kind.endswith("delta"):
            action = np.zeros(spec.dim)
            return action
        raise NotImplementedError(f"{type(self).__name__} must say how to hold an absolute command")

    def checked_action(self, action: np.ndarray) -> np.ndarray:
        """`action` as a flat float array, or a one-line `DriverError`: a command of the wrong
        size or with a non-finite value never reaches a device, even from a caller that skipped
        the safety filter. Drivers call it first thing in `command`."""
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        spec = self.action_spec
        if action.shape != (spec.dim,):
            raise DriverError(
                f"{self.name}: an action has {spec.dim} numbers ({', '.join(spec.names)}), "
                f"got {action.size}"
            )
        if not np.all(np.isfinite(action)):
            raise DriverError(f"{self.name}: refusing a non-finite action {action.tolist()}")
        return action

    def identity(self) -> dict[str, Any]:
        """What produced the data, stored with every recording (driver, model, serial)."""
        return {"robot": self.name, "driver": type(self).__name__}

    def safety_defaults(self) -> dict[str, Any] | None:
        """Safety limits (`SafetyConfig` keys) this robot can be trusted with when the user
        gives none, or None when only the user can know them (a real arm's workspace depends on
        what stands around it): then a safety config is required."""
        return None

    def __enter__(self) -> Robot:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics in pixels, for the colour stream (depth is aligned to it)."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    def matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]])


def camera_name(prefix: str, source: str) -> str:
    """A name usable as a dataset key (`obs/image/<name>`): letters, digits and `_` only, so a
    device path or a file name does not turn into nested keys."""
    stem = Path(source).stem if ("/" in source or "." in source) else source
    return f"{prefix}_{re.sub(r'[^A-Za-z0-9_]+', '_', stem).strip('_') or 'camera'}"


def square_crop(width: int, height: int) -> tuple[int, int, int]:
    """The centred square `(x0, y0, side)` that `size` crops to before resizing: policies take
    square images, and cropping keeps the pixels' aspect ratio where stretching would not."""
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side


def square_intrinsics(k: CameraIntrinsics, size: int) -> CameraIntrinsics:
    """`k` after the centred square crop and the resize to `size` x `size` (pixel centres
    at integer coordinates, as librealsense and OpenCV use)."""
    x0, y0, side = square_crop(k.width, k.height)
    s = size / side
    return CameraIntrinsics(
        width=size,
        height=size,
        fx=k.fx * s,
        fy=k.fy * s,
        cx=(k.cx - x0 + 0.5) * s - 0.5,
        cy=(k.cy - y0 + 0.5) * s - 0.5,
    )


@dataclass(frozen=True)
class Frame:
    """One capture: colour (H, W, 3) uint8, optional depth (H, W) in metres, its capture time
    (wall clock, seconds) and its running index (gaps mean dropped frames)."""

    color: np.ndarray
    timestamp: float
    index: int
    depth: np.ndarray | None = None


class Camera(abc.ABC):
    """A camera whose frames arrive on their own clock; readers take the newest.

    `extrinsics`, where known, is where the camera stands: (R, t) taking a point in the robot's
    base frame into the camera's (x_cam = R x_base + t, OpenCV axes: x right, y down, z
    forward), from a calibration (`set_extrinsics`; a setup YAML's camera entry gives it as
    `extrinsics: {R: [[...]], t: [...]}`). With its intrinsics it turns 3-D points into this
    camera's pixels: what motion tracks are (`envs.tracks`)."""

    name: str = "camera"
    _extrinsics: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def extrinsics(self) -> tuple[np.ndarray, np.ndarray] | None:
        return self._extrinsics

    def set_extrinsics(self, R: Any, t: Any) -> None:
        """Calibrate the camera's pose: `R` (3, 3) a rotation, `t` (3,) in metres."""
        R = np.asarray(R, dtype=np.float64)
        t = np.asarray(t, dtype=np.float64)
        if R.shape != (3, 3) or t.shape != (3,):
            raise ValueError(
                f"camera {self.name}: extrinsics need R as 3x3 and t as 3 numbers, got "
                f"{R.shape} and {t.shape}"
            )
        if not (np.all(np.isfinite(R)) and np.all(np.isfinite(t))):
            raise ValueError(f"camera {self.name}: extrinsics hold a value that is not finite")
        if not np.allclose(R @ R.T, np.eye(3), atol=1e-4) or np.linalg.det(R) < 0:
            raise ValueError(
                f"camera {self.name}: extrinsics R is not a rotation (R Rᵀ must be the identity "
                "and det R = 1)"
            )
        self._extrinsics = (R, t)

    @property
    @abc.abstractmethod
    def intrinsics(self) -> CameraIntrinsics: ...

    @property
    def has_depth(self) -> bool:
        return False

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    @abc.abstractmethod
    def read_latest(self, max_age: float) -> Frame:
        """The newest frame; raises `StaleFrameError` if it was captured more than `max_age`
        seconds ago, so a frozen camera never feeds a policy an old picture."""

    def __enter__(self) -> Camera:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ThreadedCamera(Camera):
    """A camera read by a background thread: subclasses implement `_capture()` (blocking until
    the next frame) and the thread keeps the newest frame, so `read_latest` never waits on the
    device."""

    def __init__(self, fps: float) -> None:
        self.fps = float(fps)
        self._latest: Frame | None = None
        self._lock = threading.Lock()
        self._new = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._running = threading.Event()
        self._error: BaseException | None = None
        self.frames_captured = 0

    @abc.abstractmethod
    def _capture(self) -> Frame:
        """Block until the device delivers its next frame and return it."""

    def _open(self) -> None:
        """Open the device (called from `start`)."""

    def _close(self) -> None:
        """Release the device (called from `stop`)."""

    def start(self) -> None:
        if self._thread is not None:
            return
        self._open()
        self._running.set()
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self._running.is_set():
            try:
                frame = self._capture()
            except BaseException as e:  # the reader learns of it as a stale frame plus cause
                self._error = e
                self._running.clear()
                break
            with self._new:
                self._latest = frame
                self.frames_captured += 1
                self._new.notify_all()

    def stop(self) -> None:
        self._running.clear()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self._close()

    def wait_first(self, timeout: float = 5.0) -> Frame:
        """Block until the first frame has arrived (start-up of a device can take a while)."""
        with self._new:
            if self._latest is None and not self._new.wait_for(
                lambda: self._latest is not None or self._error is not None, timeout
            ):
                raise StaleFrameError(f"camera {self.name}: no frame within {timeout:.1f} s")
        if self._latest is None:
            raise StaleFrameError(f"camera {self.name} failed: {self._error}") from self._error
        return self._latest

    def read_latest(self, max_age: float) -> Frame:
        with self._lock:
            frame = self._latest
        if frame is None:
            raise StaleFrameError(
                f"camera {self.name}: no frame yet"
                + (f" (capture failed: {self._error})" if self._error else "")
            )
        age = time.time() - frame.timestamp
        if age > max_age:
            cause = f"; capture failed: {self._error}" if self._error else ""
            raise StaleFrameError(
                f"camera {self.name}: newest frame is {age * 1e3:.0f} ms old, more than the "
                f"{max_age * 1e3:.0f} ms allowed{cause}"
            )
        return frame


class TeleopEvent(enum.Enum):
    """What an operator can ask for besides moving the arm."""

    START = "start"  # begin an episode
    STOP = "stop"  # end the episode and save it
    DISCARD = "discard"  # end the episode and throw it away (re-record)
    SUCCESS = "success"  # mark the episode in flight as a success
    INTERVENE = "intervene"  # toggle: take over from the policy / hand back
    ESTOP = "estop"  # emergency stop: hold position until reset
    RESET = "reset"  # clear a latched emergency stop
    QUIT = "quit"  # end the session


@dataclass
class TeleopState:
    """One reading of a teleop device, independent of any robot.

    `action` is a normalized end-effector twist plus gripper, shape (7,): linear velocity
    (x, y, z), angular velocity (roll, pitch, yaw), each in [-1, 1] as a fraction of the robot's
    top speed, then the gripper in [-1, 1] (-1 open, +1 closed). `to_robot_action` maps it onto
    a robot's `ActionSpec`. `active` says the operator is touching the device (a policy hands
    over only while it is); `events` are those since the last read, in order.

    `robot_action`, when set, is an action already in the driven robot's own convention and
    is sent instead of mapping `action`: a leader arm gives its follower joint targets, not a
    twist.

    `gripper_held` says a gripper button (or trigger) is down now: with a toggle, the gripper
    changed with this press, so a reading can say "close the gripper" for as long as the
    operator holds it. A device the operator can type on (`Teleop.enable_typing`) gives the
    lines entered since the last read in `typed` ("" for Enter on an empty line) and the line
    being typed in `typing` (None while not typing)."""

    action: np.ndarray
    active: bool = False
    events: list[TeleopEvent] = field(default_factory=list)
    timestamp: float = 0.0
    robot_action: np.ndarray | None = None
    gripper_held: bool = False
    typed: list[str] = field(default_factory=list)
    typing: str | None = None


TWIST_DIM = 7


def teleop_action(reading: TeleopState, spec: ActionSpec) -> np.ndarray:
    """The command a teleop reading asks of a robot with `spec`: its own `robot_action` (a
    leader arm), else its twist mapped by `to_robot_action`."""
    if reading.robot_action is not None:
        action = np.asarray(reading.robot_action, dtype=np.float64).reshape(-1)
        if action.shape != (spec.dim,):
            raise DriverError(
                f"teleop gives {action.size} numbers per action; the robot takes {spec.dim} "
                f"({', '.join(spec.names)}): pair a leader arm with a follower of the same model"
            )
        return action
    return to_robot_action(reading.action, spec)


def to_robot_action(twist: np.ndarray, spec: ActionSpec) -> np.ndarray:
    """A teleop twist as a command in `spec`'s convention: the scale of each dimension is the
    robot's bound, so full deflection asks for the robot's largest allowed step.

    Supported: "ee_delta" with 4 dims (x, y, z, gripper: a position-only arm such as
    Meta-World's Sawyer) or 7 dims (x, y, z, roll, pitch, yaw, gripper)."""
    twist = np.asarray(twist, dtype=np.float64)
    if spec.kind != "ee_delta" or spec.dim not in (4, 7):
        raise DriverError(
            f"teleop drives end-effector deltas of 4 or 7 dims; this robot takes {spec.kind} "
            f"with {spec.dim} dims"
        )
    picked = twist[[0, 1, 2, 6]] if spec.dim == 4 else twist
    picked = np.clip(picked, -1.0, 1.0)
    return np.where(picked >= 0, picked * spec.high, -picked * spec.low)


class Teleop(abc.ABC):
    """A device a person drives the arm with. `read()` never blocks: events accumulate between
    reads and are returned once."""

    name: str = "teleop"

    @property
    def has_events(self) -> bool:
        """Whether the device can send episode events (start, stop, ...). Recording from one
        that cannot starts each episode at once and ends it after the step limit."""
        return True

    def enable_typing(self) -> bool:
        """Let the operator type lines of text (`TeleopState.typed`) from now on, where the
        device has the keys for it; returns whether it has. Off until asked for: while the
        operator types, keys are letters, not commands."""
        return False

    @abc.abstractmethod
    def connect(self) -> None: ...

    @abc.abstractmethod
    def disconnect(self) -> None: ...

    @abc.abstractmethod
    def read(self) -> TeleopState: ...

    def __enter__(self) -> Teleop:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()
