"""3Dconnexion SpaceMouse teleoperation through pyspacemouse (HID reports via hidapi).

A SpaceMouse sends a HID report for every change of its puck or buttons, far faster than a
control loop reads it, and hidapi buffers only a few. A reader thread therefore drains the
device continuously and keeps the newest puck state plus every button edge, so `read()` never
blocks, never sees a stale puck, and never misses a button tap between two reads.

Axes are read in pyspacemouse's right-handed Z-up frame (x right, y away from the operator,
z up) and mapped for an operator standing behind the arm, facing along its +x: pushing the puck
away moves the gripper forward (+x), left moves it left (+y), lifting moves it up (+z), and
rotations follow the same frame change. `axes` remaps this for another stance.

Default buttons (two-button models): LEFT toggles the gripper closed / open, RIGHT toggles
intervention (take over from the policy / hand back). Models with more buttons name them
differently (pyspacemouse's names, e.g. "BTN_1", "MENU"); bind them in `buttons`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from robots.base import DriverError, Teleop, TeleopState
from robots.teleop._common import (
    TWIST_NAMES,
    Controls,
    apply_dead_zone,
    axis_map,
    button_map,
    check_number,
    twist_from,
)

__all__ = ["DEFAULT_AXES", "DEFAULT_BUTTONS", "SpaceMouseTeleop"]

log = logging.getLogger(__name__)

PUCK_AXES: tuple[str, ...] = ("x", "y", "z", "roll", "pitch", "yaw")
# Twist dimension → puck axis (pyspacemouse's Z-up frame), "-" in front flips the sign.
DEFAULT_AXES: dict[str, str] = {
    "vx": "y",
    "vy": "-x",
    "vz": "z",
    "wx": "pitch",
    "wy": "-roll",
    "wz": "yaw",
}
DEFAULT_BUTTONS: dict[str, str] = {"LEFT": "gripper", "RIGHT": "intervene"}

_SOURCE = re.compile(r"^(?P<sign>[-+]?)(?P<axis>" + "|".join(PUCK_AXES) + r")$")
_HID_HINT = (
    "on Linux give this user access to /dev/hidraw* (a udev rule such as "
    'KERNEL=="hidraw*", ATTRS{idVendor}=="256f", MODE="0666", and 046d for older models)'
)


def _parse_source(source: str, dim: str) -> tuple[float, str]:
    match = _SOURCE.match(str(source).strip())
    if match is None:
        raise DriverError(
            f"spacemouse: axes.{dim} = {source!r} is not a puck axis; use one of "
            + ", ".join(PUCK_AXES)
            + " with an optional leading '-'"
        )
    return (-1.0 if match["sign"] == "-" else 1.0), match["axis"]


def _import_pyspacemouse() -> Any:
    try:
        import pyspacemouse
    except ImportError as e:
        raise DriverError(
            f"spacemouse teleop needs pyspacemouse: pip install -e '.[teleop]' ({e})"
        ) from e
    except OSError as e:  # easyhid loads the hidapi shared library on import
        raise DriverError(
            "spacemouse teleop needs the hidapi library: apt-get install libhidapi-hidraw0 "
            f"(Debian/Ubuntu) or brew install hidapi (macOS) ({e})"
        ) from e
    return pyspacemouse


class SpaceMouseTeleop(Teleop):
    """Drive the arm with a SpaceMouse's puck; see the module docstring for the frame and the
    default buttons.

    `axes` maps twist dimensions ("vx" ... "wz") to puck axes and replaces the default map;
    `buttons` maps pyspacemouse button names (or indices) to actions ("gripper",
    "gripper_hold", "start_stop" or a `TeleopEvent` value). `dead_zone` is the puck travel
    (fraction of full) read as zero, which keeps a resting hand from drifting the arm;
    `scale` / `rotation_scale` is the fraction of top speed at full deflection; `device` is a
    pyspacemouse model name (e.g. "SpaceMouseCompact"), None for the first one found.
    """

    name = "spacemouse"

    def __init__(
        self,
        axes: Mapping[str, str | None] | None = None,
        buttons: Mapping[str | int, str | None] | None = None,
        dead_zone: float = 0.05,
        scale: float = 1.0,
        rotation_scale: float = 1.0,
        device: str | None = None,
        poll_interval: float = 0.002,
    ) -> None:
        self.axes = axis_map(axes, DEFAULT_AXES, self.name, _parse_source)
        self.buttons = button_map(buttons, DEFAULT_BUTTONS, self.name)
        self.dead_zone = check_number(dead_zone, self.name, "dead_zone", 0.0, 0.95)
        self.scale = check_number(scale, self.name, "scale", 0.0, 1.0)
        self.rotation_scale = check_number(rotation_scale, self.name, "rotation_scale", 0.0, 1.0)
        self.device = device
        self.poll_interval = check_number(poll_interval, self.name, "poll_interval", 0.0, 0.1)
        self._controls = Controls()
        self._mouse: Any = None
        self._bound: dict[int, str] = {}
        self._lock = threading.Lock()
        self._puck = np.zeros(len(PUCK_AXES))
        self._polled_at = 0.0
        self._error: BaseException | None = None
        self._running = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def is_connected(self) -> bool:
        return self._mouse is not None

    def connect(self) -> None:
        if self._mouse is not None:
            return
        pyspacemouse = _import_pyspacemouse()
        # pyspacemouse announces the device it opened on stdout; keep stdout for the caller.
        announced = io.StringIO()
        try:
            with contextlib.redirect_stdout(announced):
                mouse = pyspacemouse.open(
                    device=self.device,
                    nonblocking=True,
                    axis_convention=pyspacemouse.AxisConvention.HID_Z_UP,
                )
        except ValueError as e:  # an unknown model name
            raise DriverError(f"spacemouse: {e}") from e
        except RuntimeError as e:
            if "not found" in str(e) or "No connected" in str(e):
                raise DriverError(
                    f"no SpaceMouse found{f' ({self.device})' if self.device else ''}: plug one "
                    f"in (USB cable or its receiver); {_HID_HINT}"
                ) from e
            raise DriverError(f"a SpaceMouse was found but cannot be opened: {_HID_HINT}") from e
        log.debug("spacemouse teleop: %s", announced.getvalue().strip())
        self._bound = self._bind_buttons(mouse.info.button_names)
        self._mouse = mouse
        self._error = None
        self._puck[:] = 0.0
        self._polled_at = time.time()
        self._running.set()
        self._thread = threading.Thread(target=self._run, name="teleop-spacemouse", daemon=True)
        self._thread.start()

    def _bind_buttons(self, names: tuple[str, ...]) -> dict[int, str]:
        bound: dict[int, str] = {}
        for button, action in self.buttons.items():
            if isinstance(button, int) or str(button).isdigit():
                index = int(button)
            else:
                index = names.index(button) if button in names else len(names)
            if index >= len(names):
                # Not an error: one config serves models with different buttons.
                log.warning(
                    "spacemouse: this model has no button %r (it has %s); %r is unbound",
                    button,
                    ", ".join(names) or "none",
                    action,
                )
                continue
            bound[index] = action
        return bound

    def disconnect(self) -> None:
        self._running.clear()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        mouse, self._mouse = self._mouse, None
        if mouse is not None:
            mouse.close()

    def _run(self) -> None:
        mouse = self._mouse
        buttons = [0] * len(mouse.info.button_names)
        last_t: float | None = None
        try:
            while self._running.is_set():
                # One report per `mouse.read()`: drain what hidapi has buffered, seeing every
                # button edge, then keep the newest puck values.
                for _ in range(256):
                    state = mouse.read()
                    if state.t == last_t:
                        break
                    last_t = state.t
                    for index, (was, now) in enumerate(zip(buttons, state.buttons, strict=True)):
                        if now != was and index in self._bound:
                            if now:
                                self._controls.press(self._bound[index], source=index)
                            else:
                                self._controls.release(self._bound[index], source=index)
                    buttons = list(state.buttons)
                with self._lock:
                    self._puck[:] = [getattr(state, axis) for axis in PUCK_AXES]
                    self._polled_at = time.time()
                time.sleep(self.poll_interval)
        except Exception as e:  # the reader learns of it on its next read()
            self._error = e
            log.debug("spacemouse reader stopped: %s", e)

    def read(self) -> TeleopState:
        if self._mouse is None:
            raise DriverError("spacemouse teleop is not connected: call connect() first")
        if self._error is not None:
            raise DriverError(
                f"spacemouse stopped responding ({self._error}); plug it back in and reconnect"
            )
        with self._lock:
            puck = self._puck.copy()
            polled_at = self._polled_at
        motion = np.zeros(len(TWIST_NAMES))
        for dim, (sign, axis) in self.axes.items():
            value = sign * puck[PUCK_AXES.index(axis)]
            motion[TWIST_NAMES.index(dim)] = apply_dead_zone(value, self.dead_zone)
        # The puck state is as of the reader's last poll of the device.
        return self._controls.state(twist_from(motion, self.scale, self.rotation_scale), polled_at)
