"""A Feetech STS bus (SO-100/SO-101's STS3215 servos) through Feetech's `scservo_sdk`.

The STS protocol is Dynamixel Protocol 1.0's framing (FF FF, id, length, instruction,
parameters, ~sum checksum) with Feetech's own control table. Three things differ from the
Dynamixel bus and are handled here:

* Byte order: STS servos are little-endian. The SDK keeps the order in a module-wide switch
  set by `PacketHandler(protocol_end)`: 0 for STS (1 would be the big-endian SCS series).
* Signs: a few registers store sign and magnitude, not two's complement: the position offset
  (sign at bit 11) and velocities (bit 15). `Register.magnitude` encodes them.
* Calibration: the offset is subtracted (Present Position = actual - Offset, modulo a turn),
  there is no direction register (the driver reverses a joint itself), and the EEPROM is
  write-protected by the Lock register, which is lifted only around calibration writes. The
  calibrated range is also written as the motor's own angle limits, so the servo itself
  refuses to leave it.

The Feetech half of `robots.servo.bus.MotorBus`, which does everything the two vendors' buses
share; `open_bus("feetech", port)` imports this module only when it is asked for, and the SDK
is imported when the bus connects, never at import.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from robots.servo.bus import MotorBus, Register
from robots.servo.calibration import MotorCalibration
from robots.servo.models import HALF_TURN, RESOLUTION, MotorSpec

__all__ = ["BAUDRATES", "CONTROL_TABLE", "MOTOR_MODELS", "FeetechBus"]

# name -> register (STS3215). Entries below 40 are EEPROM.
CONTROL_TABLE: dict[str, Register] = {
    "firmware_major_version": Register(0, 1, eeprom=True),
    "firmware_minor_version": Register(1, 1, eeprom=True),
    "model_number": Register(3, 2, eeprom=True),
    "id": Register(5, 1, eeprom=True),
    "baud_rate": Register(6, 1, eeprom=True),
    "return_delay_time": Register(7, 1, eeprom=True),
    "response_status_level": Register(8, 1, eeprom=True),
    "min_position_limit": Register(9, 2, eeprom=True),
    "max_position_limit": Register(11, 2, eeprom=True),
    "max_temperature_limit": Register(13, 1, eeprom=True),
    "max_voltage_limit": Register(14, 1, eeprom=True),
    "min_voltage_limit": Register(15, 1, eeprom=True),
    "max_torque_limit": Register(16, 2, eeprom=True),
    "p_coefficient": Register(21, 1, eeprom=True),
    "d_coefficient": Register(22, 1, eeprom=True),
    "i_coefficient": Register(23, 1, eeprom=True),
    "protection_current": Register(28, 2, eeprom=True),
    "homing_offset": Register(31, 2, sign_bit=11, magnitude=True, eeprom=True),
    "operating_mode": Register(33, 1, eeprom=True),
    "torque_enable": Register(40, 1),
    "acceleration": Register(41, 1),
    "goal_position": Register(42, 2),
    "goal_time": Register(44, 2),
    "goal_velocity": Register(46, 2, sign_bit=15, magnitude=True),
    "torque_limit": Register(48, 2),
    "lock": Register(55, 1),
    "present_position": Register(56, 2),
    "present_velocity": Register(58, 2, sign_bit=15, magnitude=True),
    "present_load": Register(60, 2, sign_bit=10, magnitude=True),
    "present_voltage": Register(62, 1),
    "present_temperature": Register(63, 1),
    "moving": Register(66, 1),
    "present_current": Register(69, 2),
}

MOTOR_MODELS: dict[str, int] = {"sts3215": 777}

# Baud Rate register value -> bits per second.
BAUDRATES: dict[int, int] = {
    0: 1_000_000,
    1: 500_000,
    2: 250_000,
    3: 128_000,
    4: 115_200,
    5: 57_600,
    6: 38_400,
    7: 19_200,
}

STS_LITTLE_ENDIAN = 0  # the SDK's protocol_end for the STS series


class FeetechBus(MotorBus):
    """Feetech STS servos on one serial port (the Waveshare bus servo adapter or similar)."""

    protocol = "feetech"
    device = "Feetech bus"
    sdk_module = "scservo_sdk"
    registers = CONTROL_TABLE
    motor_models = MOTOR_MODELS
    baudrates = BAUDRATES
    hardware_direction = False

    def _packet_handler(self, sdk: Any) -> Any:
        return sdk.PacketHandler(STS_LITTLE_ENDIAN)

    def centring_offset(self, present: int) -> int:
        # Sign and magnitude in 11 bits reach ±2047: a middle pose read exactly at 0 is
        # centred one tick off.
        return max(-2047, min(2047, int(present) - HALF_TURN))

    def write_eeprom(self, motor_id: int, values: Mapping[str, int]) -> None:
        self.write(motor_id, "lock", 0)
        for name, value in values.items():
            self.write(motor_id, name, value)
        self.write(motor_id, "lock", 1)

    def reset_calibration(self, motor: MotorSpec) -> None:
        self.write_eeprom(
            motor.id,
            {"homing_offset": 0, "min_position_limit": 0, "max_position_limit": RESOLUTION - 1},
        )

    def apply_calibration(self, motor: MotorSpec, cal: MotorCalibration) -> None:
        self.write_eeprom(
            motor.id,
            {
                "homing_offset": cal.homing_offset,
                "min_position_limit": cal.range_min,
                "max_position_limit": cal.range_max,
            },
        )

    def calibration_matches(self, motor: MotorSpec, cal: MotorCalibration) -> bool:
        return (
            self.read(motor.id, "homing_offset") == cal.homing_offset
            and self.read(motor.id, "min_position_limit") == cal.range_min
            and self.read(motor.id, "max_position_limit") == cal.range_max
        )
