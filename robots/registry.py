"""Robots and cameras by name, so a command line or a YAML file can say which to drive.

Names: `sim:metaworld/<task>` for the simulated Meta-World arm (any env name `envs.make`
accepts); its cameras are the scene's cameras by name (`corner`, `topview`, ...). Real arms and
cameras register here under their own prefixes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from robots.base import Camera, DriverError, Robot
from robots.safety import SafetyConfig

__all__ = ["RobotConfig", "load_robot_config", "make_camera", "make_robot"]

# The simulated arm's limits (configs/robots/safety.yaml explains each): the table's box, the
# action bounds per step, 1 m/s; no watchdog, since the simulated arm only moves when stepped.
SIM_SAFETY: dict[str, Any] = {
    "workspace_low": [-0.5, 0.35, -0.10],
    "workspace_high": [0.5, 0.95, 0.35],
    "max_step": [1.0, 1.0, 1.0, 1.0],
    "max_speed": 1.0,
    "watchdog_periods": None,
}


def make_robot(name: str, **options: Any) -> Robot:
    """A robot driver by name, not yet connected."""
    if name.startswith("sim:"):
        from robots.sim import SimArm, parse_sim_name

        return SimArm(parse_sim_name(name), **options)
    raise DriverError(
        f"unknown robot {name!r}; known: sim:metaworld/<task> (e.g. sim:metaworld/reach-v3)"
    )


def make_camera(robot: Robot, name: str, **options: Any) -> Camera:
    """A camera by name; a simulated robot's cameras are its scene's cameras."""
    from robots.sim import SimArm

    if isinstance(robot, SimArm):
        return robot.camera(name, **options)
    raise DriverError(f"unknown camera {name!r} for robot {robot.name}")


def default_safety(robot: Robot) -> SafetyConfig:
    from robots.sim import SimArm

    if isinstance(robot, SimArm):
        return SafetyConfig.from_dict(SIM_SAFETY)
    raise DriverError(
        f"robot {robot.name} has no default safety limits; give a safety config "
        "(see configs/robots/safety.yaml)"
    )


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
