"""Teleoperation devices: keyboard (pynput / X11), gamepad (pygame / SDL2) and 3Dconnexion
SpaceMouse (pyspacemouse / hidapi), all behind `robots.base.Teleop`.

Each backend imports its library only in `connect()`, so this package imports on a machine that
has none of them and a missing one is reported as a `DriverError` saying what to install.
Options come from configs/teleop/<name>.yaml:

    make_teleop("gamepad", **yaml.safe_load(open("configs/teleop/gamepad.yaml")))
"""

from __future__ import annotations

import inspect
from typing import Any

from robots.base import DriverError, Teleop
from robots.teleop.gamepad import GamepadTeleop
from robots.teleop.keyboard import KeyboardTeleop
from robots.teleop.leader import LeaderArmTeleop
from robots.teleop.spacemouse import SpaceMouseTeleop

__all__ = ["TELEOPS", "GamepadTeleop", "KeyboardTeleop", "SpaceMouseTeleop", "make_teleop"]

TELEOPS: dict[str, type[Teleop]] = {
    "gamepad": GamepadTeleop,
    "keyboard": KeyboardTeleop,
    "leader": LeaderArmTeleop,
    "spacemouse": SpaceMouseTeleop,
}


def make_teleop(name: str, **options: Any) -> Teleop:
    """A teleop device by name, not yet connected; `options` are its constructor's arguments
    (what its YAML config holds). Bad names and options fail here, before any hardware is
    touched, with the valid choices in the message."""
    cls = TELEOPS.get(name)
    if cls is None:
        raise DriverError(
            f"unknown teleop device {name!r}; valid names: {', '.join(sorted(TELEOPS))}"
        )
    parameters = inspect.signature(cls).parameters
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise DriverError(
            f"teleop {name}: unknown option(s) {', '.join(unknown)}; valid: "
            + ", ".join(parameters)
        )
    return cls(**options)
