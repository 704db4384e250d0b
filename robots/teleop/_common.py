"""What the three teleop backends share: one vocabulary of actions for keys and buttons, the
dead-zone, and the bookkeeping of events and the gripper.

Keys and buttons are bound to the same action names on every device, so a config written for
one device reads the same as another's and the recording loop never needs to know which device
produced an event.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

import numpy as np

from robots.base import TWIST_DIM, DriverError, TeleopEvent, TeleopState

# The six twist dimensions, in `TeleopState.action` order (the gripper is the seventh).
TWIST_NAMES: tuple[str, ...] = ("vx", "vy", "vz", "wx", "wy", "wz")

# Press-only actions that become a `TeleopEvent`.
EVENT_ACTIONS: dict[str, TeleopEvent] = {e.value: e for e in TeleopEvent}
# Actions a key or button can be bound to besides motion: "gripper" toggles open/closed on each
# press, "gripper_hold" closes while held, "start_stop" alternates START and STOP.
BUTTON_ACTIONS: frozenset[str] = frozenset(EVENT_ACTIONS) | {
    "gripper",
    "gripper_hold",
    "start_stop",
}
# Motion actions for binary inputs (keys): "+vx" pushes the x velocity up while held.
MOTION_ACTIONS: frozenset[str] = frozenset(f"{s}{n}" for n in TWIST_NAMES for s in "+-")


def check_action(action: str, device: str, allowed: frozenset[str], where: str) -> str:
    """Reject a typo in a key or button map when the device is built, not when the operator
    first presses the key mid-episode."""
    if action not in allowed:
        raise DriverError(
            f"{device}: {where} is bound to unknown action {action!r}; valid: "
            + ", ".join(sorted(allowed))
        )
    return action


def check_number(value: float, device: str, what: str, low: float, high: float) -> float:
    """Bounds of a numeric option, checked once at construction with a message naming it."""
    value = float(value)
    if not low <= value <= high:
        raise DriverError(f"{device}: {what} must be in [{low}, {high}], got {value}")
    return value


def apply_dead_zone(value: float, width: float) -> float:
    """Zero inside the dead zone and rescaled outside it, so a resting stick or puck never
    creeps the arm yet full deflection still reaches 1 without a jump at the edge."""
    magnitude = abs(value)
    if magnitude <= width:
        return 0.0
    return float(np.sign(value) * min(1.0, (magnitude - width) / (1.0 - width)))


def twist_from(motion: np.ndarray, scale: float, rotation_scale: float) -> np.ndarray:
    """Six raw motion values as the normalized twist: linear and angular parts scaled apart
    (operators usually want rotation slower than translation), then clipped to [-1, 1]."""
    out = np.array(motion, dtype=np.float64)
    out[:3] *= scale
    out[3:] *= rotation_scale
    return np.clip(out, -1.0, 1.0)


class Controls:
    """Events, the gripper and the start/stop toggle of one device.

    Device threads (a key listener, a HID reader) and the caller of `read()` touch this from
    different threads, so everything goes through one lock. Events are kept in arrival order
    and handed out once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[TeleopEvent] = []
        self._gripper_closed = False
        self._holding: set[object] = set()
        self._gripper_down: set[object] = set()
        """Gripper keys or buttons held down now, toggles included (`TeleopState.gripper_held`)."""
        self._in_episode = False

    def press(self, action: str, source: object = None) -> None:
        """A key or button went down (once per physical press; callers drop auto-repeat)."""
        with self._lock:
            if action in ("gripper", "gripper_hold"):
                self._gripper_down.add(source)
            if action == "gripper":
                self._gripper_closed = not self._gripper_closed
            elif action == "gripper_hold":
                self._holding.add(source)
            elif action == "start_stop":
                self._emit(TeleopEvent.STOP if self._in_episode else TeleopEvent.START)
            elif action in EVENT_ACTIONS:
                self._emit(EVENT_ACTIONS[action])

    def release(self, action: str, source: object = None) -> None:
        with self._lock:
            if action in ("gripper", "gripper_hold"):
                self._gripper_down.discard(source)
            if action == "gripper_hold":
                self._holding.discard(source)

    def _emit(self, event: TeleopEvent) -> None:
        # The toggle follows every event that begins or ends an episode, whichever key sent it,
        # so "start_stop" after a discard starts the next episode rather than stopping one.
        if event is TeleopEvent.START:
            self._in_episode = True
        elif event in (TeleopEvent.STOP, TeleopEvent.DISCARD, TeleopEvent.QUIT):
            self._in_episode = False
        self._events.append(event)

    @property
    def gripper(self) -> float:
        with self._lock:
            return 1.0 if self._gripper_closed or self._holding else -1.0

    @property
    def gripper_held(self) -> bool:
        with self._lock:
            return bool(self._gripper_down)

    def take_events(self) -> list[TeleopEvent]:
        with self._lock:
            events, self._events = self._events, []
        return events

    def state(self, twist: np.ndarray, timestamp: float | None = None) -> TeleopState:
        """The reading: twist plus gripper, active while any motion is asked for."""
        action = np.zeros(TWIST_DIM)
        action[:6] = twist
        action[6] = self.gripper
        return TeleopState(
            action=action,
            active=bool(np.any(twist != 0.0)),
            events=self.take_events(),
            timestamp=time.time() if timestamp is None else timestamp,
            gripper_held=self.gripper_held,
        )


def button_map(
    mapping: Mapping[object, str] | None,
    default: Mapping[object, str],
    device: str,
) -> dict[object, str]:
    """A button map with its actions checked (keys are left to the device to resolve)."""
    chosen = dict(default if mapping is None else mapping)
    return {
        button: check_action(str(action), device, BUTTON_ACTIONS, f"button {button!r}")
        for button, action in chosen.items()
        if action is not None
    }


Source = TypeVar("Source")


def axis_map(
    mapping: Mapping[str, str | None] | None,
    default: Mapping[str, str | None],
    device: str,
    parse: Callable[[str, str], Source],
) -> dict[str, Source]:
    """An axis map (twist dimension → the device's input) with its dimensions checked and each
    input parsed by the device's `parse(source, dim)`; a dimension mapped to None is unbound."""
    chosen = default if mapping is None else mapping
    unknown = sorted(set(chosen) - set(TWIST_NAMES))
    if unknown:
        raise DriverError(
            f"{device}: unknown twist dimension(s) {unknown} in axes; valid: "
            + ", ".join(TWIST_NAMES)
        )
    return {dim: parse(source, dim) for dim, source in chosen.items() if source is not None}
