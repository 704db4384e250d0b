"""The arms as the robot code sees them: an arm model on its bus with its calibration, read and
commanded in joint units instead of ticks.

`JointArm` is what a follower and a leader share; the leader-arm teleop
(`robots.teleop.leader.LeaderArmTeleop`) is one with its torque off. `ServoArm` is the follower
`Robot`, taking "joint_absolute" actions: the arm joints in degrees, 0 at the pose the arm held
when calibrated ("middle of its range"), and the gripper in percent of its calibrated travel (0
at `range_min`, 100 at `range_max`). Bounds come from the calibrated ranges, so the safety
filter clips every command into the travel the arm really has.

Why degrees from the middle pose rather than raw ticks: a leader and a follower calibrated in
the same pose then agree joint by joint, and a policy trained on one arm reads the same numbers
on another of the same model, whatever the servos' mounting offsets.

This is the top of `robots.servo`: it builds on the models, the bus and the calibration, and
`robots.registry` makes a `ServoArm` for `dynamixel:<port>` and `feetech:<port>`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from robots.base import ActionSpec, DriverError, Robot
from robots.servo.bus import open_bus
from robots.servo.calibration import Calibration, calibrate_hint, default_calibration_path
from robots.servo.models import (
    DEFAULT_LEADER,
    DEFAULT_MODEL,
    HALF_TURN,
    RESOLUTION,
    ArmModel,
    MotorCalibration,
    MotorSpec,
    get_model,
)

__all__ = ["SERVO_SAFETY", "JointArm", "ServoArm"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------- joints
class JointArm:
    """An arm model on its bus with its calibration: positions in joint units (degrees, the
    gripper in percent) instead of ticks. The follower `ServoArm` and the leader-arm teleop
    are both this plus what they do with it."""

    def __init__(
        self,
        port: str,
        *,
        bus: str,
        model: str | None = None,
        calibration: str | Path | None = None,
        baudrate: int = 1_000_000,
        timeout_ms: float | None = None,
        leader: bool = False,
    ) -> None:
        defaults = DEFAULT_LEADER if leader else DEFAULT_MODEL
        if bus not in defaults:
            raise DriverError(f"unknown servo bus {bus!r}; valid: dynamixel, feetech")
        self.model = get_model(model or defaults[bus], bus)
        self.port = str(port)
        self.bus = open_bus(bus, port, baudrate=baudrate, timeout_ms=timeout_ms)
        self.bus.labels = {m.id: m.name for m in (*self.model.motors, *self.model.shadows)}
        self.calibration_path = Path(calibration or default_calibration_path(self.model.name))
        self.hint = calibrate_hint(bus, port, self.model.name, self.calibration_path)
        self.calibration: Calibration | None = None
        if self.calibration_path.exists():
            self._load()

    def _load(self) -> Calibration:
        cal = Calibration.load(self.calibration_path, self.hint)
        cal.check(self.model, self.calibration_path, self.hint)
        self.calibration = cal
        return cal

    @property
    def names(self) -> tuple[str, ...]:
        return self.model.names

    @property
    def units(self) -> tuple[str, ...]:
        return tuple("%" if n == self.model.gripper else "deg" for n in self.names)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Each joint's calibrated travel in joint units (a half turn either way, the gripper
        0..100, before calibration)."""
        low, high = [], []
        for motor in self.model.motors:
            if motor.name == self.model.gripper:
                low.append(0.0)
                high.append(100.0)
            elif self.calibration is None:
                low.append(-180.0)
                high.append(180.0)
            else:
                cal = self.calibration.motors[motor.name]
                ends = sorted(self._to_units(motor, cal, t) for t in (cal.range_min, cal.range_max))
                low.append(ends[0])
                high.append(ends[1])
        return np.array(low), np.array(high)

    def _sign(self, cal: MotorCalibration) -> int:
        # A bus whose motors reverse themselves (Dynamixel Drive Mode) already reports the
        # joint's direction; otherwise the reversal is done here.
        return -1 if cal.drive_mode and not self.bus.hardware_direction else 1

    def _to_units(self, motor: MotorSpec, cal: MotorCalibration, ticks: float) -> float:
        sign = self._sign(cal)
        if motor.name == self.model.gripper:
            span = max(cal.range_max - cal.range_min, 1)
            frac = (ticks - cal.range_min) / span if sign > 0 else (cal.range_max - ticks) / span
            return 100.0 * frac
        return sign * (ticks - HALF_TURN) * 360.0 / RESOLUTION

    def _to_ticks(self, motor: MotorSpec, cal: MotorCalibration, value: float) -> int:
        sign = self._sign(cal)
        if motor.name == self.model.gripper:
            span = cal.range_max - cal.range_min
            frac = value / 100.0
            ticks = cal.range_min + frac * span if sign > 0 else cal.range_max - frac * span
        else:
            ticks = HALF_TURN + sign * value * RESOLUTION / 360.0
        return int(np.clip(round(ticks), cal.range_min, cal.range_max))

    def open(self, *, torque: bool) -> None:
        """Connect, check the motors, load the calibration and make sure the motors hold it
        (and, for a follower, the model's settings: operating modes, current limits), set up
        the shadow motors; then (follower) set every goal to where the joint is and switch the
        torque on, so the arm never jumps to a goal left over from before.

        Shadows get their torque and goals only through their primary's id: a shadow whose
        Secondary ID did not take would stay limp rather than hold a stale goal against its
        primary."""
        bus = self.bus
        model = self.model
        bus.connect()
        try:
            bus.check_motors(model)
            cal = self._load()  # the newest calibration on disk, whatever was loaded before
            ids = list(model.ids)
            stale = [
                m
                for m in model.motors
                if not bus.calibration_matches(m, cal.motors[m.name])
                or (torque and any(bus.read(m.id, r) != v for r, v in m.settings.items()))
            ]
            if stale or bus.align_shadows(model, follower=torque, write=False):
                bus.set_torque(model.every_id, False)  # offsets, modes and ids live in EEPROM
                for motor in stale:
                    bus.apply_calibration(motor, cal.motors[motor.name])
                    if torque:
                        bus.write_eeprom(motor.id, motor.settings)
                bus.align_shadows(model, follower=torque)
            if torque:
                present = bus.sync_read("present_position", ids)
                bus.sync_write("goal_position", present)
                bus.set_torque(ids, True)
            else:
                bus.set_torque(model.every_id, False)
        except BaseException:
            bus.disconnect()
            raise

    def close(self, *, torque_off: bool) -> None:
        bus = self.bus
        if not bus.is_connected:
            return
        try:
            if torque_off:
                bus.set_torque(self.model.every_id, False)
        except DriverError as e:
            log.warning("%s: could not switch the torque off: %s", self.port, e)
        finally:
            bus.disconnect()

    def read(self) -> tuple[np.ndarray, float]:
        """Joint positions in joint units, and the time they were read."""
        cal = self._calibration()
        ticks = self.bus.sync_read("present_position", self.model.ids)
        stamp = time.time()
        values = np.array(
            [self._to_units(m, cal.motors[m.name], ticks[m.id]) for m in self.model.motors]
        )
        return values, stamp

    def goal_ticks(self, values: np.ndarray) -> dict[int, int]:
        cal = self._calibration()
        return {
            m.id: self._to_ticks(m, cal.motors[m.name], float(v))
            for m, v in zip(self.model.motors, values, strict=True)
        }

    def write(self, values: np.ndarray) -> None:
        """Every joint's goal in one sync write."""
        self.bus.sync_write("goal_position", self.goal_ticks(values))

    def _calibration(self) -> Calibration:
        if self.calibration is None:
            raise DriverError(f"no calibration at {self.calibration_path}: {self.hint}")
        return self.calibration


# ---------------------------------------------------------------------------------- the robot
# Per step at 30 Hz: 10 degrees for a joint, 20 % of the gripper's travel; joints no faster than
# 3 rad/s (172 deg/s, 5.7 degrees per step), about a person's brisk move of a leader arm.
# The watchdog holds the arm after 5 silent periods (167 ms).
SERVO_SAFETY: dict[str, Any] = {"max_speed": 3.0, "watchdog_periods": 5}


class ServoArm(Robot):
    """A follower arm of hobby servos (see the module docstring for the action convention).

    Options: `bus` "dynamixel" or "feetech" (set by the robot name's prefix), `model` (koch,
    so100, so101, aloha; leaders too, though a leader is meant for `LeaderArmTeleop`),
    `calibration` (JSON path, default calibration/<model>.json), `baudrate`, `timeout_ms`
    (least time to wait for a motor's reply), `fps` (command rate), `torque_off_on_disconnect`
    (True: the arm goes limp when the session ends, after holding its pose; False: it keeps
    holding, and keeps drawing current, until powered off).
    """

    def __init__(
        self,
        port: str,
        *,
        bus: str,
        model: str | None = None,
        calibration: str | None = None,
        baudrate: int = 1_000_000,
        timeout_ms: float | None = None,
        fps: float = 30.0,
        torque_off_on_disconnect: bool = True,
    ) -> None:
        self.arm = JointArm(
            port,
            bus=bus,
            model=model,
            calibration=calibration,
            baudrate=baudrate,
            timeout_ms=timeout_ms,
        )
        self.name = f"{bus}:{port}"
        self._fps = float(fps)
        if not self._fps > 0:
            raise DriverError(f"{self.name}: fps must be positive, got {fps}")
        self.torque_off_on_disconnect = bool(torque_off_on_disconnect)
        self._lock = threading.RLock()
        self._connected = False
        self._latest: np.ndarray | None = None
        self._latest_at = -math.inf

    @property
    def model(self) -> ArmModel:
        return self.arm.model

    @property
    def action_spec(self) -> ActionSpec:
        low, high = self.arm.bounds()
        return ActionSpec(
            kind="joint_absolute",
            names=self.arm.names,
            units=self.arm.units,
            low=low,
            high=high,
            frame="joint",
        )

    @property
    def observation_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"joint_pos": (len(self.arm.names),)}

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        with self._lock:
            if self._connected:
                return
            self.arm.open(torque=not self.model.leader)
            self._connected = True

    def disconnect(self) -> None:
        """Hold the current pose, then (by default) switch the torque off."""
        with self._lock:
            if not self._connected:
                return
            self._connected = False
            try:
                if self.arm.bus.is_connected and not self.model.leader:
                    positions, _ = self.arm.read()
                    self.arm.write(positions)
            except DriverError as e:  # the link is gone: the motors keep their last goal
                log.warning("%s: could not hold the pose on disconnect: %s", self.name, e)
            self.arm.close(torque_off=self.torque_off_on_disconnect)

    def observe(self) -> dict[str, Any]:
        with self._lock:
            self._require()
            positions, stamp = self.arm.read()
            self._latest, self._latest_at = positions, time.monotonic()
        return {"joint_pos": positions, "timestamp": stamp}

    def hold(self) -> np.ndarray:
        """The current joint positions: the latest observation when it is less than a period
        old (the safety filter asks for this on every command; reading the bus again would
        halve the rate), else a fresh read."""
        with self._lock:
            if self._latest is None or time.monotonic() - self._latest_at > 1.0 / self._fps:
                return np.asarray(self.observe()["joint_pos"], dtype=np.float64).copy()
            return self._latest.copy()

    def command(self, action: np.ndarray) -> np.ndarray:
        action = self.checked_action(action)
        spec = self.action_spec
        sent = np.clip(action, spec.low, spec.high)
        with self._lock:
            self._require()
            if self.model.leader:
                raise DriverError(
                    f"{self.name}: the {self.model.name} arm is a leader (torque off); "
                    "command a follower model"
                )
            self.arm.write(sent)
        return sent

    def _require(self) -> None:
        if not self._connected:
            raise DriverError(f"{self.name} is not connected; call connect() or use `with`")

    def identity(self) -> dict[str, Any]:
        cal = self.arm.calibration
        return {
            "robot": self.name,
            "driver": type(self).__name__,
            "model": self.model.name,
            "bus": self.model.bus,
            "motors": {m.name: {"id": m.id, "model": m.model} for m in self.model.motors},
            "shadows": {
                s.name: {"id": s.id, "model": s.model, "primary": s.primary}
                for s in self.model.shadows
            },
            "calibration": str(self.arm.calibration_path),
            "calibration_data": cal.to_json() if cal is not None else None,
        }

    def safety_defaults(self) -> dict[str, Any]:
        step = [10.0 if u == "deg" else 20.0 for u in self.arm.units]
        return {**SERVO_SAFETY, "max_step": step}
