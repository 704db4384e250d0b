"""Calibration: where each joint's middle and ends are, measured once per arm with a person
moving it, and kept as JSON.

`calibrate` (what `il calibrate` runs) takes the measurement; `Calibration` is the file, one per
arm (calibration/<model>.json by default), written back to the motors on every connect so that
a motor swapped between arms never carries the other arm's offsets. It sits between the bus and
the arm: the procedure drives a `MotorBus` (`robots.servo.bus`), each vendor's bus decides how
its registers store the result, and the arm (`robots.servo.arm`) turns it into joint units.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robots.base import DriverError
from robots.servo.bus import MotorBus
from robots.servo.models import ArmModel, MotorCalibration, get_model

__all__ = [
    "CALIBRATION_FORMAT",
    "MIN_RANGE_TICKS",
    "Calibration",
    "calibrate",
    "calibrate_hint",
    "default_calibration_path",
]

MIN_RANGE_TICKS = 20  # less travel than this during calibration means the joint never moved
CALIBRATION_FORMAT = 1


# ---------------------------------------------------------------------------------- the file
@dataclass
class Calibration:
    """Every motor of one arm, by joint name, plus which arm model and bus it was taken on."""

    model: str
    bus: str
    motors: dict[str, MotorCalibration] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CALIBRATION_FORMAT,
            "model": self.model,
            "bus": self.bus,
            "motors": {name: m.to_json() for name, m in self.motors.items()},
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(path)  # a crash mid-write never leaves half a calibration
        return path

    @classmethod
    def load(cls, path: str | Path, how_to_fix: str = "run `il calibrate`") -> Calibration:
        path = Path(path)
        if not path.exists():
            raise DriverError(f"no calibration at {path}: {how_to_fix}")
        try:
            values = json.loads(path.read_text())
            motors = {
                str(name): MotorCalibration(
                    id=int(m["id"]),
                    homing_offset=int(m["homing_offset"]),
                    drive_mode=int(m["drive_mode"]),
                    range_min=int(m["range_min"]),
                    range_max=int(m["range_max"]),
                )
                for name, m in values["motors"].items()
            }
            if int(values.get("format", 0)) != CALIBRATION_FORMAT:
                raise ValueError(f"format {values.get('format')}, expected {CALIBRATION_FORMAT}")
            return cls(str(values["model"]), str(values["bus"]), motors)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise DriverError(f"calibration {path} is unreadable ({e!r}): {how_to_fix}") from None

    def check(self, model: ArmModel, path: str | Path, how_to_fix: str) -> None:
        """Refuse a calibration taken on another arm model or another set of motors."""
        if self.model != model.name or self.bus != model.bus:
            raise DriverError(
                f"calibration {path} is for a {self.model} arm on {self.bus}, not {model.name} "
                f"on {model.bus}: {how_to_fix}"
            )
        for motor in model.motors:
            cal = self.motors.get(motor.name)
            if cal is None or cal.id != motor.id:
                raise DriverError(
                    f"calibration {path} has no {motor.name} with id {motor.id}: {how_to_fix}"
                )
            if cal.range_max - cal.range_min < MIN_RANGE_TICKS:
                raise DriverError(
                    f"calibration {path}: {motor.name} has a range of "
                    f"{cal.range_max - cal.range_min} ticks: {how_to_fix}"
                )


def default_calibration_path(model: str) -> Path:
    """Where an arm's calibration lives unless told otherwise: calibration/<model>.json in the
    working directory, next to the data it is recorded with."""
    return Path("calibration") / f"{model}.json"


def calibrate_hint(bus: str, port: str, model: str, path: str | Path) -> str:
    return f"run `il calibrate --robot {bus}:{port} --model {model} --out {path}`"


# ---------------------------------------------------------------------------------- the procedure
class _Sampler:
    """Reads every motor's position over and over on a thread of its own while the person
    sweeps the joints, keeping the extremes: the prompt waiting for Enter blocks the caller."""

    def __init__(self, bus: MotorBus, ids: list[int], start: Mapping[int, int]) -> None:
        self.bus = bus
        self.ids = ids
        self.low = dict(start)
        self.high = dict(start)
        self.samples = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="calibration-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                positions = self.bus.sync_read("present_position", self.ids)
            except BaseException as e:  # handed to the caller once the prompt returns
                self.error = e
                return
            for i, p in positions.items():
                self.low[i] = min(self.low[i], p)
                self.high[i] = max(self.high[i], p)
            self.samples += 1
            self._stop.wait(0.005)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


def calibrate(
    bus: MotorBus,
    model: str | ArmModel,
    ask: Callable[[str], Any],
    *,
    say: Callable[[str], Any] = print,
) -> Calibration:
    """Measure an arm's calibration with a person moving it.

    `ask(prompt)` must return when the person is ready (the CLI waits for Enter). Steps: with
    torque off and offsets cleared, the person holds the arm in the middle of its range: each
    motor's offset is chosen so that pose reads `HALF_TURN` (0 degrees). Then the person
    moves every joint through its whole travel while a thread samples positions: the
    extremes are each joint's range. The offsets are written to the motors as they are
    measured; the caller saves the returned `Calibration`. Shadow motors are not measured:
    they follow their primaries, and are set up at the end to read as they do."""
    model = get_model(model, bus.protocol)
    ids = list(model.ids)
    bus.check_motors(model)
    bus.set_torque(model.every_id, False)
    for motor in model.motors:
        bus.reset_calibration(motor)
    ask(f"Move the {model.name} arm to the middle of the range of every joint, then press Enter")
    middle = bus.sync_read("present_position", ids)
    offsets = {i: bus.centring_offset(p) for i, p in middle.items()}
    for motor in model.motors:
        bus.write(motor.id, "homing_offset", offsets[motor.id])
    start = bus.sync_read("present_position", ids)
    with _Sampler(bus, ids, start) as sampler:
        ask(
            "Move every joint through its whole range (both ends, gripper open and closed), "
            "then press Enter"
        )
    if sampler.error is not None:
        raise sampler.error
    cal = Calibration(model.name, model.bus)
    still = []
    for motor in model.motors:
        low, high = sampler.low[motor.id], sampler.high[motor.id]
        if high - low < MIN_RANGE_TICKS:
            still.append(motor.name)
        cal.motors[motor.name] = MotorCalibration(
            motor.id, offsets[motor.id], int(motor.reversed), low, high
        )
    if still:
        raise DriverError(
            f"{', '.join(still)} did not move while the ranges were recorded "
            f"({sampler.samples} readings); run il calibrate again and move every joint from "
            "end to end"
        )
    for motor in model.motors:
        bus.apply_calibration(motor, cal.motors[motor.name])
    bus.align_shadows(model, follower=False)  # those writes reached the shadows too
    say(f"calibrated {len(ids)} motors of the {model.name} arm from {sampler.samples} readings")
    return cal
