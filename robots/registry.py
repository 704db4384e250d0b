"""Robots and cameras by name, so a command line or a YAML file can say which to drive.

A name is `<backend>:<address>`; the backend's class takes the address as its first argument
and the setup's `options` as keywords:

| name | driver | address |
| --- | --- | --- |
| `sim:metaworld/<task>` | `robots.sim.SimArm` | any env name `envs.make` accepts |
| `ur:<host>` | `robots.ur.URArm` | the controller's IP address |
| `dynamixel:<port>` | `robots.servo.ServoArm` | serial port of a Dynamixel bus (Koch, ALOHA) |
| `feetech:<port>` | `robots.servo.ServoArm` | serial port of a Feetech bus (SO-100/101) |

Cameras: `realsense:<serial or recording (.db3, .bag)>`, `opencv:<index, device or video
file>`; any other name is one of a simulated arm's scene cameras (`corner`, `topview`, ...).
Backends are imported only when named, so a missing hardware library is an error only for its
own device.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from robots.base import Camera, DriverError, Robot
from robots.safety import SafetyConfig

__all__ = ["CAMERAS", "ROBOTS", "RobotConfig", "load_robot_config", "make_camera", "make_robot"]

# prefix -> (module, class, keyword arguments the prefix implies)
ROBOTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "sim": ("robots.sim", "SimArm", {}),
    "ur": ("robots.ur", "URArm", {}),
    "dynamixel": ("robots.servo", "ServoArm", {"bus": "dynamixel"}),
    "feetech": ("robots.servo", "ServoArm", {"bus": "feetech"}),
}
CAMERAS: dict[str, tuple[str, str]] = {
    "realsense": ("robots.realsense", "RealSenseCamera"),
    "opencv": ("robots.opencv_camera", "OpenCVCamera"),
}
EXAMPLES = "sim:metaworld/reach-v3, ur:192.168.1.10, dynamixel:/dev/ttyUSB0, feetech:/dev/ttyACM0"


def _split(name: str) -> tuple[str, str]:
    prefix, sep, address = name.partition(":")
    return (prefix, address) if sep and address else ("", name)


def make_robot(name: str, **options: Any) -> Robot:
    """A robot driver by name, not yet connected."""
    prefix, address = _split(name)
    if prefix not in ROBOTS:
        raise DriverError(f"unknown robot {name!r}; names look like {EXAMPLES}")
    module, cls, implied = ROBOTS[prefix]
    driver = getattr(importlib.import_module(module), cls)
    try:
        return driver(address, **{**implied, **options})
    except TypeError as e:  # an option the driver does not take
        raise DriverError(f"robot {name}: {e}") from None


def make_camera(robot: Robot, name: str, **options: Any) -> Camera:
    """A camera by name: a real one by its backend prefix, else a simulated arm's scene
    camera."""
    prefix, address = _split(name)
    if prefix in CAMERAS:
        module, cls = CAMERAS[prefix]
        camera = getattr(importlib.import_module(module), cls)
        try:
            return camera(address, **options)
        except TypeError as e:
            raise DriverError(f"camera {name}: {e}") from None
    from robots.sim import SimArm

    if isinstance(robot, SimArm):
        return robot.camera(name, **options)
    raise DriverError(
        f"unknown camera {name!r} for robot {robot.name}; names look like "
        "realsense:<serial or recording.db3>, opencv:<index, /dev/videoN or video file>"
    )


def default_safety(robot: Robot) -> SafetyConfig:
    """The robot's own limits when the user gives none; a real arm has none to offer."""
    defaults = robot.safety_defaults()
    if defaults is None:
        raise DriverError(
            f"robot {robot.name} has no default safety limits; give a safety config with "
            "--safety or `safety:` in the robot config (see configs/robots/safety.yaml)"
        )
    return SafetyConfig.from_dict(defaults)


class RobotConfig:
    """A robot setup from YAML: `robot` (name), `hz`, `cameras` (list of {name, size, fps}),
    `safety` (a mapping of limits, or a path to a safety YAML relative to this file), `options`
    (the driver's constructor arguments)."""

    KEYS = ("robot", "hz", "cameras", "safety", "options")

    def __init__(self, values: Mapping[str, Any], where: Path | None = None) -> None:
        unknown = sorted(set(values) - set(self.KEYS))
        if unknown:
            raise DriverError(
                f"robot config {where}: unknown key(s) {', '.join(unknown)}; valid: "
                + ", ".join(self.KEYS)
            )
        if "robot" not in values:
            raise DriverError(f"robot config {where}: needs `robot: <name>`")
        self.robot = str(values["robot"])
        self.hz = float(values["hz"]) if values.get("hz") else None
        self.cameras = [dict(c) for c in values.get("cameras") or []]
        self.options = dict(values.get("options") or {})
        safety = values.get("safety")
        if isinstance(safety, str):
            path = Path(safety)
            if where is not None and not path.is_absolute():
                path = where.parent / path
            self.safety: SafetyConfig | None = SafetyConfig.from_yaml(path)
        elif isinstance(safety, Mapping):
            self.safety = SafetyConfig.from_dict(safety)
        else:
            self.safety = None


def load_robot_config(name_or_path: str) -> RobotConfig:
    """`--robot` as given: a robot name, or a YAML file describing the setup."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        import yaml

        if not path.exists():
            raise DriverError(f"no robot config at {path}")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, Mapping):
            raise DriverError(f"robot config {path}: expected a mapping")
        try:
            return RobotConfig(values, path)
        except ValueError as e:
            raise DriverError(f"robot config {path}: {e}") from None
    return RobotConfig({"robot": name_or_path})
