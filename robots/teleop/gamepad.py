"""Gamepad teleoperation through pygame's joystick API (SDL2).

SDL updates joystick state only from its event pump, and pygame refuses to pump events before
its video subsystem is up. So `connect()` brings up video if nobody has, with SDL's "dummy"
driver when SDL_VIDEODRIVER is unset: no window is opened and no display is needed, and
nothing else of pygame (audio, fonts) is initialised. Background joystick events are allowed,
so the pad keeps working while another window has the focus.

Default map, in SDL joystick indices of an Xbox-layout pad as Linux's xpad driver numbers it
(axes: 0/1 left stick, 2 left trigger, 3/4 right stick, 5 right trigger):

    left stick up / left      +x / +y        A  (0)  gripper: toggles closed / open
    right stick up            +z             B  (1)  discard the episode
    right stick left          +yaw           X  (2)  intervene (toggle)
    d-pad right / up          +roll / +pitch Y  (3)  mark success
                                             LB (4)  emergency stop
                                             RB (5)  reset the emergency stop
                                             Back  (6) quit
                                             Start (7) start, then stop and save (alternates)

Other pads, drivers and platforms may number axes and buttons differently: `axes` and
`buttons` remap them (see configs/teleop/gamepad.yaml). Set `gripper_axis` (e.g. "a5", the
right trigger) to drive the gripper by a trigger's travel instead of a button.
"""

from __future__ import annotations

import logging
import os
import re
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

__all__ = ["DEFAULT_AXES", "DEFAULT_BUTTONS", "GamepadTeleop"]

log = logging.getLogger(__name__)

# Twist dimension → input: "a<N>" axis N, "h<N>x" / "h<N>y" a component of hat N, "-" in front
# flips the sign (SDL reports a stick pushed up as negative).
DEFAULT_AXES: dict[str, str] = {
    "vx": "-a1",
    "vy": "-a0",
    "vz": "-a4",
    "wx": "h0x",
    "wy": "h0y",
    "wz": "-a3",
}
DEFAULT_BUTTONS: dict[int, str] = {
    0: "gripper",
    1: "discard",
    2: "intervene",
    3: "success",
    4: "estop",
    5: "reset",
    6: "quit",
    7: "start_stop",
}

_SOURCE = re.compile(r"^(?P<sign>[-+]?)(?:a(?P<axis>\d+)|h(?P<hat>\d+)(?P<component>[xy]))$")


def _parse_source(source: str, what: str) -> tuple[float, str, int, int]:
    """(sign, kind, index, component) of an axis source, checked when the device is built."""
    match = _SOURCE.match(str(source).strip())
    if match is None:
        raise DriverError(
            f"gamepad: {what} = {source!r} is not an input; use 'a<N>' (axis), "
            "'h<N>x' / 'h<N>y' (hat), optionally with a leading '-'"
        )
    sign = -1.0 if match["sign"] == "-" else 1.0
    if match["axis"] is not None:
        return sign, "axis", int(match["axis"]), 0
    return sign, "hat", int(match["hat"]), 0 if match["component"] == "x" else 1


class GamepadTeleop(Teleop):
    """Drive the arm with a gamepad's sticks; see the module docstring for the default map.

    `axes` maps twist dimensions ("vx" ... "wz") to inputs and replaces the default map;
    `buttons` maps SDL button indices to actions ("gripper", "gripper_hold", "start_stop" or a
    `TeleopEvent` value). `dead_zone` is the stick travel (fraction of full) read as zero;
    `scale` / `rotation_scale` is the fraction of top speed at full deflection; `index` picks
    the joystick when several are connected. `read()` takes the joystick events off pygame's
    queue, so nothing else in the process should consume joystick events at the same time.
    """

    name = "gamepad"

    def __init__(
        self,
        axes: Mapping[str, str | None] | None = None,
        buttons: Mapping[int | str, str | None] | None = None,
        dead_zone: float = 0.1,
        scale: float = 1.0,
        rotation_scale: float = 1.0,
        gripper_axis: str | None = None,
        index: int = 0,
    ) -> None:
        self.axes = axis_map(
            axes, DEFAULT_AXES, self.name, lambda source, dim: _parse_source(source, f"axes.{dim}")
        )
        try:
            self.buttons = {
                int(button): action
                for button, action in button_map(buttons, DEFAULT_BUTTONS, self.name).items()
            }
        except ValueError as e:
            raise DriverError(f"gamepad: button keys must be SDL button numbers ({e})") from e
        self.gripper_axis = (
            None if gripper_axis is None else _parse_source(gripper_axis, "gripper_axis")
        )
        self.dead_zone = check_number(dead_zone, self.name, "dead_zone", 0.0, 0.95)
        self.scale = check_number(scale, self.name, "scale", 0.0, 1.0)
        self.rotation_scale = check_number(rotation_scale, self.name, "rotation_scale", 0.0, 1.0)
        self.index = int(index)
        self._controls = Controls()
        self._pygame: Any = None
        self._joystick: Any = None
        self._instance_id = -1
        self._owns_video = False
        self._owns_joystick = False
        self._lost = False

    @property
    def is_connected(self) -> bool:
        return self._joystick is not None

    def connect(self) -> None:
        if self._joystick is not None:
            return
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        os.environ.setdefault("SDL_JOYSTICK_ALLOW_BACKGROUND_EVENTS", "1")
        try:
            import pygame
        except ImportError as e:
            raise DriverError(
                f"gamepad teleop needs pygame: pip install -e '.[teleop]' ({e})"
            ) from e
        self._pygame = pygame
        self._owns_joystick = not pygame.joystick.get_init()
        pygame.joystick.init()
        self._owns_video = False
        joystick = None
        try:
            if not pygame.display.get_init():
                self._init_video(pygame)
                self._owns_video = True
            pygame.event.pump()  # let SDL notice devices plugged in since it started
            count = pygame.joystick.get_count()
            if count <= self.index:
                raise DriverError(
                    f"no gamepad found at index {self.index} ({count} joystick(s) connected): "
                    "plug one in (USB or paired Bluetooth); on Linux this user needs read "
                    "access to /dev/input/event* (the input group)"
                )
            joystick = pygame.joystick.Joystick(self.index)
            joystick.init()
            self._check_layout(joystick)
        except BaseException:
            if joystick is not None:
                joystick.quit()
            self._release_subsystems()
            raise
        self._joystick = joystick
        self._instance_id = joystick.get_instance_id()
        self._lost = False
        # Presses made before connecting are not the operator's commands to this session.
        pygame.event.clear(self._joystick_events())
        log.debug("gamepad teleop on %r (%s)", joystick.get_name(), joystick.get_guid())

    def _init_video(self, pygame: Any) -> None:
        unset = "SDL_VIDEODRIVER" not in os.environ
        if unset:
            os.environ["SDL_VIDEODRIVER"] = "dummy"
        try:
            pygame.display.init()
        except pygame.error as e:
            raise DriverError(f"gamepad teleop: SDL could not start its event loop ({e})") from e
        finally:
            if unset:
                del os.environ["SDL_VIDEODRIVER"]

    def _check_layout(self, joystick: Any) -> None:
        """A map that names an input the pad lacks fails at connect, not as silent zeros."""
        have = {"axis": joystick.get_numaxes(), "hat": joystick.get_numhats()}
        sources = dict(self.axes)
        if self.gripper_axis is not None:
            sources["gripper_axis"] = self.gripper_axis
        for what, (_, kind, index, _) in sources.items():
            if index >= have[kind]:
                raise DriverError(
                    f"gamepad {joystick.get_name()!r} has {have[kind]} {kind}(s) but {what} "
                    f"uses {kind} {index}; remap it in the gamepad config"
                )
        for button in self.buttons:
            if button >= joystick.get_numbuttons():
                raise DriverError(
                    f"gamepad {joystick.get_name()!r} has {joystick.get_numbuttons()} buttons "
                    f"but button {button} is mapped; remap it in the gamepad config"
                )

    def _joystick_events(self) -> list[int]:
        pygame = self._pygame
        return [
            pygame.JOYAXISMOTION,
            pygame.JOYBALLMOTION,
            pygame.JOYHATMOTION,
            pygame.JOYBUTTONDOWN,
            pygame.JOYBUTTONUP,
            pygame.JOYDEVICEADDED,
            pygame.JOYDEVICEREMOVED,
        ]

    def _release_subsystems(self) -> None:
        pygame = self._pygame
        if self._owns_video:
            pygame.display.quit()
            self._owns_video = False
        if self._owns_joystick:
            pygame.joystick.quit()
            self._owns_joystick = False

    def disconnect(self) -> None:
        joystick, self._joystick = self._joystick, None
        if joystick is None:
            return
        joystick.quit()
        self._release_subsystems()

    def read(self) -> TeleopState:
        if self._joystick is None:
            raise DriverError("gamepad teleop is not connected: call connect() first")
        pygame = self._pygame
        # Button presses come from SDL's queue rather than the current button state, so a tap
        # shorter than the read period is still seen, once, in order.
        for event in pygame.event.get(self._joystick_events()):
            if getattr(event, "instance_id", None) != self._instance_id:
                continue
            if event.type == pygame.JOYBUTTONDOWN and event.button in self.buttons:
                self._controls.press(self.buttons[event.button], source=event.button)
            elif event.type == pygame.JOYBUTTONUP and event.button in self.buttons:
                self._controls.release(self.buttons[event.button], source=event.button)
            elif event.type == pygame.JOYDEVICEREMOVED:
                self._lost = True
        if self._owns_video:
            pygame.event.clear()  # nobody else drains the queue; keep it from filling
        now = time.time()
        if self._lost:
            raise DriverError(
                f"gamepad {self.index} was disconnected; plug it back in and reconnect"
            )
        motion = np.zeros(len(TWIST_NAMES))
        for dim, source in self.axes.items():
            motion[TWIST_NAMES.index(dim)] = apply_dead_zone(self._value(source), self.dead_zone)
        state = self._controls.state(twist_from(motion, self.scale, self.rotation_scale), now)
        if self.gripper_axis is not None:
            # A trigger rests at -1 (open) and reads +1 fully pulled (closed).
            state.action[6] = float(np.clip(self._value(self.gripper_axis), -1.0, 1.0))
            state.gripper_held = state.action[6] > 0.0  # pulled past half its travel
        return state

    def _value(self, source: tuple[float, str, int, int]) -> float:
        sign, kind, index, component = source
        if kind == "axis":
            return sign * float(self._joystick.get_axis(index))
        return sign * float(self._joystick.get_hat(index)[component])
