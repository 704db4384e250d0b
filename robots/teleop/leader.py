"""A leader arm: a second, unpowered copy of the follower that a person moves by hand.

The leader's motors have their torque off, so the arm moves freely; every `read()` takes its
joint positions in one sync read and hands them over as the follower's action
(`TeleopState.robot_action`), in the same units: degrees from the calibrated middle pose, the
gripper in percent of its travel. Calibrate both arms in the same pose and the follower copies
the leader joint for joint.

A leader arm has no buttons. `events="keyboard"` adds the keyboard teleop for the episode
events (start/stop, discard, success, emergency stop, quit); its motion keys are ignored.
Without it, the reading carries no events, which suits `il deploy` interventions but not
`il record` (it waits for a start event).

A reading is `active` while the operator is moving the leader: some joint travelled more than
`active_threshold` (degrees or percent) within the last `active_seconds`. Under `il deploy` the
operator takes over by moving the leader and hands back by letting it rest; the follower then
continues from where the operator left it.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

import numpy as np

from robots.base import TWIST_DIM, DriverError, Teleop, TeleopState
from robots.servo import JointArm

__all__ = ["LeaderArmTeleop"]

EVENT_SOURCES = ("keyboard",)


class LeaderArmTeleop(Teleop):
    """A leader arm on its own serial bus.

    `port`: the leader's serial port; `bus`: "dynamixel" or "feetech"; `model`: the leader's
    arm model (default koch_leader / so100_leader; aloha_leader for an aloha follower; its
    joints are the follower's action, one for one); `calibration`: its JSON (default
    calibration/<model>.json); `baudrate`, `timeout_ms` as for `ServoArm`; `events`: None or
    "keyboard"; `keys`: the keyboard's key map when `events` is "keyboard" (see
    `KeyboardTeleop`); `active_threshold`, `active_seconds`: how much motion, within how
    long, marks the operator as driving."""

    name = "leader"

    def __init__(
        self,
        port: str,
        bus: str = "dynamixel",
        model: str | None = None,
        calibration: str | None = None,
        baudrate: int = 1_000_000,
        timeout_ms: float | None = None,
        events: str | None = None,
        keys: Mapping[str, str | None] | None = None,
        active_threshold: float = 2.0,
        active_seconds: float = 0.5,
    ) -> None:
        if events is not None and events not in EVENT_SOURCES:
            raise DriverError(
                f"leader: events must be null or one of {', '.join(EVENT_SOURCES)}, got {events!r}"
            )
        if keys is not None and events != "keyboard":
            raise DriverError("leader: `keys` needs `events: keyboard`")
        self.arm = JointArm(
            port,
            bus=bus,
            model=model,
            calibration=calibration,
            baudrate=baudrate,
            timeout_ms=timeout_ms,
            leader=True,
        )
        self.events: Teleop | None = None
        if events == "keyboard":
            from robots.teleop.keyboard import KeyboardTeleop

            self.events = KeyboardTeleop(keys=keys)
        self.active_threshold = float(active_threshold)
        self.active_seconds = float(active_seconds)
        self._recent: collections.deque[tuple[float, np.ndarray]] = collections.deque()
        self._connected = False

    @property
    def has_events(self) -> bool:
        return self.events is not None

    @property
    def names(self) -> tuple[str, ...]:
        return self.arm.names

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        if self._connected:
            return
        self.arm.open(torque=False)
        try:
            if self.events is not None:
                self.events.connect()
        except BaseException:
            self.arm.close(torque_off=True)
            raise
        self._connected = True

    def disconnect(self) -> None:
        if not self._connected:
            return
        self._connected = False
        try:
            if self.events is not None:
                self.events.disconnect()
        finally:
            self.arm.close(torque_off=False)

    def read(self) -> TeleopState:
        if not self._connected:
            raise DriverError("leader arm teleop is not connected: call connect() first")
        positions, stamp = self.arm.read()
        events = self.events.read().events if self.events is not None else []
        return TeleopState(
            action=np.zeros(TWIST_DIM),
            active=self._moving(positions, stamp),
            events=events,
            timestamp=stamp,
            robot_action=positions,
        )

    def _moving(self, positions: np.ndarray, stamp: float) -> bool:
        recent = self._recent
        recent.append((stamp, np.asarray(positions, dtype=np.float64)))
        while recent and recent[0][0] < stamp - self.active_seconds:
            recent.popleft()
        window = np.stack([p for _, p in recent])
        return bool(np.max(np.ptp(window, axis=0)) > self.active_threshold)

    def identity(self) -> dict[str, Any]:
        """Which leader drove the recording (model, port, calibration file)."""
        return {
            "teleop": self.name,
            "model": self.arm.model.name,
            "port": self.arm.port,
            "calibration": str(self.arm.calibration_path),
        }
