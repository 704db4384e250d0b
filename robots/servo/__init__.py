"""Hobby servo arms on a serial bus: Koch and ALOHA-class arms (Dynamixel X series) and
SO-100/SO-101 (Feetech STS3215), followers and the leader arms a person moves.

One concern per module, each building only on the ones listed before it, so each is usable
without what comes after it:

* `models`: the arm types as data (which motor at which id, the shadow motors that double a
  joint, leader or follower), shared by the driver, the emulator and the CLI.
* `bus`: `MotorBus`, one serial bus spoken through the vendor's own SDK: registers by name,
  values in the motor's own ticks, sync read/write; `open_bus` picks the vendor half, beside it
  in `dynamixel` and `feetech` (control tables, and where the protocols really differ).
* `calibration`: where each joint's middle and ends are, measured once per arm with a person
  moving it (`calibrate`), kept as JSON and written back to the motors on every connect.
* `arm`: `JointArm` (positions in degrees and percent instead of ticks) and `ServoArm`, the
  follower `Robot`; the leader-arm teleop (`robots.teleop.leader`) is a `JointArm` too.

Importing the package imports no vendor SDK and neither vendor module: `open_bus` imports the
vendor module it is asked for, and the bus its SDK when it connects, so `robots` imports on a
machine without either SDK.
"""

from __future__ import annotations

from robots.servo.arm import JointArm, ServoArm
from robots.servo.bus import BUSES, MotorBus, Register, open_bus
from robots.servo.calibration import Calibration, calibrate, default_calibration_path
from robots.servo.models import (
    DEFAULT_LEADER,
    DEFAULT_MODEL,
    HALF_TURN,
    MODELS,
    ArmModel,
    MotorCalibration,
    MotorSpec,
    ShadowSpec,
    get_model,
)

__all__ = [
    "BUSES",
    "DEFAULT_LEADER",
    "DEFAULT_MODEL",
    "HALF_TURN",
    "MODELS",
    "ArmModel",
    "Calibration",
    "JointArm",
    "MotorBus",
    "MotorCalibration",
    "MotorSpec",
    "Register",
    "ServoArm",
    "ShadowSpec",
    "calibrate",
    "default_calibration_path",
    "get_model",
    "open_bus",
]
