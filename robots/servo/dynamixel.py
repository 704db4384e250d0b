"""A Dynamixel X-series bus (Protocol 2.0) through ROBOTIS's `dynamixel_sdk`.

The control table is the one the X series shares (XL330, XL430, XM430, XM540, ...): the
models differ only in a few RAM entries (an XL430 reports load where the others report current)
that nothing here uses. Positions are 4096 ticks per turn; the motor applies the Homing Offset
and the Drive Mode's direction itself, so calibration lives in the motors and the driver reads
positions already in the arm's frame.

The Dynamixel half of `robots.servo.bus.MotorBus`, which does everything the two vendors'
buses share; `open_bus("dynamixel", port)` imports this module only when it is asked for, and
the SDK is imported when the bus connects, never at import (`robots` imports on a machine
without it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from robots.servo.bus import MotorBus, Register
from robots.servo.calibration import MotorCalibration
from robots.servo.models import HALF_TURN, MotorSpec, ShadowSpec

__all__ = ["BAUDRATES", "CONTROL_TABLE", "MOTOR_MODELS", "DynamixelBus"]


def _signed(address: int, size: int, eeprom: bool = False) -> Register:
    return Register(address, size, sign_bit=8 * size - 1, eeprom=eeprom)


# name -> register (X series, Protocol 2.0). EEPROM entries can only be written with the
# torque off.
CONTROL_TABLE: dict[str, Register] = {
    "model_number": Register(0, 2, eeprom=True),
    "model_information": Register(2, 4, eeprom=True),
    "firmware_version": Register(6, 1, eeprom=True),
    "id": Register(7, 1, eeprom=True),
    "baud_rate": Register(8, 1, eeprom=True),
    "return_delay_time": Register(9, 1, eeprom=True),
    "drive_mode": Register(10, 1, eeprom=True),
    "operating_mode": Register(11, 1, eeprom=True),
    "secondary_id": Register(12, 1, eeprom=True),
    "protocol_type": Register(13, 1, eeprom=True),
    "homing_offset": _signed(20, 4, eeprom=True),
    "moving_threshold": Register(24, 4, eeprom=True),
    "temperature_limit": Register(31, 1, eeprom=True),
    "max_voltage_limit": Register(32, 2, eeprom=True),
    "min_voltage_limit": Register(34, 2, eeprom=True),
    "pwm_limit": Register(36, 2, eeprom=True),
    "current_limit": Register(38, 2, eeprom=True),
    "velocity_limit": Register(44, 4, eeprom=True),
    "max_position_limit": Register(48, 4, eeprom=True),
    "min_position_limit": Register(52, 4, eeprom=True),
    "shutdown": Register(63, 1, eeprom=True),
    "torque_enable": Register(64, 1),
    "led": Register(65, 1),
    "status_return_level": Register(68, 1),
    "hardware_error_status": Register(70, 1),
    "velocity_i_gain": Register(76, 2),
    "velocity_p_gain": Register(78, 2),
    "position_d_gain": Register(80, 2),
    "position_i_gain": Register(82, 2),
    "position_p_gain": Register(84, 2),
    "goal_pwm": _signed(100, 2),
    "goal_current": _signed(102, 2),
    "goal_velocity": _signed(104, 4),
    "profile_acceleration": Register(108, 4),
    "profile_velocity": Register(112, 4),
    "goal_position": _signed(116, 4),
    "moving": Register(122, 1),
    "present_current": _signed(126, 2),
    "present_velocity": _signed(128, 4),
    "present_position": _signed(132, 4),
    "present_input_voltage": Register(144, 2),
    "present_temperature": Register(146, 1),
}

# Motor type -> the number its Model Number register holds.
MOTOR_MODELS: dict[str, int] = {
    "xl330-m077": 1190,
    "xl330-m288": 1200,
    "xl430-w250": 1060,
    "xm430-w350": 1020,
    "xm540-w270": 1120,
    "xc430-w150": 1070,
}

# Baud Rate register value -> bits per second (those the SDK can open).
BAUDRATES: dict[int, int] = {
    0: 9_600,
    1: 57_600,
    2: 115_200,
    3: 1_000_000,
    4: 2_000_000,
    5: 3_000_000,
    6: 4_000_000,
}

DRIVE_REVERSE = 0x01  # Drive Mode bit 0: positive positions turn clockwise
# A shadow reading within this many ticks (about a degree) of its primary is left as it is:
# two motors geared to one joint differ by their gears' backlash, and re-writing the offset on
# every connect would only wear the EEPROM.
SHADOW_TOLERANCE = 12


class DynamixelBus(MotorBus):
    """Dynamixel X-series motors on one serial port (U2D2 or a compatible adapter).

    Calibration is written to the motors: Drive Mode bit 0 for the direction, Homing Offset
    (Present Position = direction × actual position + Homing Offset) for the middle pose.
    Position limits are not used: the follower runs in extended position mode, where the
    motor ignores them, and the driver clips goals to the calibrated range itself.

    Shadow motors (a second motor on one joint) are set up through the Secondary ID register:
    a motor whose Secondary ID is the primary's id executes every write and sync-write slot
    sent to that id without answering, so one packet drives both and the bus never carries
    two replies at once.
    """

    protocol = "dynamixel"
    device = "Dynamixel bus"
    sdk_module = "dynamixel_sdk"
    registers = CONTROL_TABLE
    motor_models = MOTOR_MODELS
    baudrates = BAUDRATES
    hardware_direction = True

    def _packet_handler(self, sdk: Any) -> Any:
        return sdk.PacketHandler(2.0)

    def centring_offset(self, present: int) -> int:
        return HALF_TURN - int(present)

    def _set_direction(self, motor_id: int, reverse: bool) -> None:
        mode = self.read(motor_id, "drive_mode")
        wanted = (mode & ~DRIVE_REVERSE) | (DRIVE_REVERSE if reverse else 0)
        if wanted != mode:
            self.write(motor_id, "drive_mode", wanted)

    def reset_calibration(self, motor: MotorSpec) -> None:
        self._set_direction(motor.id, motor.reversed)
        self.write(motor.id, "homing_offset", 0)

    def apply_calibration(self, motor: MotorSpec, cal: MotorCalibration) -> None:
        self._set_direction(motor.id, bool(cal.drive_mode))
        self.write(motor.id, "homing_offset", cal.homing_offset)

    def calibration_matches(self, motor: MotorSpec, cal: MotorCalibration) -> bool:
        reverse = bool(self.read(motor.id, "drive_mode") & DRIVE_REVERSE)
        return (
            reverse == bool(cal.drive_mode)
            and self.read(motor.id, "homing_offset") == cal.homing_offset
        )

    def shadow_changes(self, shadow: ShadowSpec, settings: Mapping[str, int]) -> dict[str, int]:
        """Secondary ID = the primary's id; the primary's settings; the primary's Drive Mode
        with the direction flipped when the shadow is mounted mirrored; and the Homing Offset
        that makes it read what the primary reads, so the one goal both receive is the same
        shaft angle for both and they never pull against each other."""
        changes: dict[str, int] = {}
        if self.read(shadow.id, "secondary_id") != shadow.primary:
            changes["secondary_id"] = shadow.primary
        for name, value in settings.items():
            if self.read(shadow.id, name) != value:
                changes[name] = value
        drive = self.read(shadow.id, "drive_mode")
        reverse = bool(self.read(shadow.primary, "drive_mode") & DRIVE_REVERSE) != shadow.reversed
        wanted = (drive & ~DRIVE_REVERSE) | (DRIVE_REVERSE if reverse else 0)
        if wanted != drive:
            changes["drive_mode"] = wanted
        # Present Position = direction × shaft + Homing Offset, for both motors.
        offset = self.read(shadow.id, "homing_offset")
        present = self.read(shadow.id, "present_position")
        shaft = (present - offset) * (-1 if drive & DRIVE_REVERSE else 1)
        target = self.read(shadow.primary, "present_position")
        aligned = target - (-1 if reverse else 1) * shaft
        if "drive_mode" in changes or abs(aligned - offset) > SHADOW_TOLERANCE:
            changes["homing_offset"] = aligned
        return changes
