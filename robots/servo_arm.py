"""Hobby servo arms on a serial bus: Koch and ALOHA-class arms (Dynamixel X series) and
SO-100/SO-101 (Feetech STS3215), followers and the leader arms a person moves.

Three layers, each usable alone:

* `MotorBus`: one serial bus spoken through the vendor's own SDK (`robots.dynamixel`,
  `robots.feetech`); registers by name, values in the motor's own ticks, sync read/write.
* `Calibration` and `calibrate()`: where each joint's middle and ends are, measured once per
  arm with a person moving it, kept as JSON and written back to the motors on every connect,
  so a motor swapped between arms never carries the other arm's offsets.
* `ServoArm`: a `Robot` taking "joint_absolute" actions: the arm joints in degrees, 0 at the
  pose the arm held when calibrated ("middle of its range"), and the gripper in percent of its
  calibrated travel (0 at `range_min`, 100 at `range_max`). Bounds come from the calibrated
  ranges, so the safety filter clips every command into the travel the arm really has.

Why degrees from the middle pose rather than raw ticks: a leader and a follower calibrated in
the same pose then agree joint by joint, and a policy trained on one arm reads the same numbers
on another of the same model, whatever the servos' mounting offsets.
"""

from __future__ import annotations

import abc
import contextlib
import importlib
import json
import logging
import math
import os
import termios
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from robots.base import ActionSpec, ConnectionLost, DriverError, Robot, vendor_library

__all__ = [
    "BUSES",
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

log = logging.getLogger(__name__)

RESOLUTION = 4096  # ticks per turn of every motor these arms use
HALF_TURN = RESOLUTION // 2  # the reading the calibrated middle pose is given
MIN_RANGE_TICKS = 20  # less travel than this during calibration means the joint never moved
CALIBRATION_FORMAT = 1


# ---------------------------------------------------------------------------------- registers
@dataclass(frozen=True)
class Register:
    """One control-table entry: where it is, how wide, and how a negative value is stored.

    `sign_bit` None: unsigned. Dynamixel stores signed values as two's complement of the whole
    width (`sign_bit` = width in bits - 1, `magnitude` False); Feetech STS stores some as sign and
    magnitude (`magnitude` True, e.g. bit 11 for the position offset), which a plain unsigned
    read would turn into a large positive number."""

    address: int
    size: int
    sign_bit: int | None = None
    magnitude: bool = False
    eeprom: bool = False

    def encode(self, value: int) -> int:
        """`value` as the unsigned number the motor stores."""
        value = int(value)
        bits = 8 * self.size
        if self.sign_bit is None:
            if not 0 <= value < 1 << bits:
                raise ValueError(f"{value} does not fit an unsigned {bits}-bit register")
            return value
        if self.magnitude:
            limit = (1 << self.sign_bit) - 1
            if abs(value) > limit:
                raise ValueError(f"{value} exceeds ±{limit} (sign bit {self.sign_bit})")
            return abs(value) | (1 << self.sign_bit) if value < 0 else value
        if not -(1 << (bits - 1)) <= value < 1 << (bits - 1):
            raise ValueError(f"{value} does not fit a signed {bits}-bit register")
        return value & ((1 << bits) - 1)

    def decode(self, raw: int) -> int:
        """The motor's stored number as the value it means."""
        raw = int(raw) & ((1 << 8 * self.size) - 1)
        if self.sign_bit is None:
            return raw
        if self.magnitude:
            magnitude = raw & ((1 << self.sign_bit) - 1)
            return -magnitude if raw & (1 << self.sign_bit) else magnitude
        bits = 8 * self.size
        return raw - (1 << bits) if raw & (1 << (bits - 1)) else raw


# ---------------------------------------------------------------------------------- arm models
@dataclass(frozen=True)
class MotorSpec:
    """One joint's motor: `model` is the motor type ("xl430-w250", "sts3215"); `reversed` makes
    the joint's positive direction the motor's negative one (a mirrored mounting); `mode` is the
    operating mode register value the follower runs it in and `current_limit` its Current Limit
    register value (None: leave it as it is). Both are EEPROM settings a follower needs to be
    safe (a gripper that squeezes with bounded current), so the driver checks them on every
    connect instead of trusting whoever set the motor up last."""

    name: str
    id: int
    model: str
    reversed: bool = False
    mode: int | None = None
    current_limit: int | None = None

    @property
    def settings(self) -> dict[str, int]:
        """The registers a follower writes on connect where they differ, in writing order."""
        values = {"operating_mode": self.mode, "current_limit": self.current_limit}
        return {name: value for name, value in values.items() if value is not None}


@dataclass(frozen=True)
class ShadowSpec:
    """A second motor geared to the same joint as `primary` (the id of a `MotorSpec`), for
    twice the torque (a ViperX shoulder and elbow). It answers to the primary's id as its
    Dynamixel Secondary ID, so every goal and torque switch sent to the primary moves both in
    the same packet and the driver never addresses it while running; `reversed`: it is
    mounted mirrored, so it must turn the other way from the primary."""

    name: str
    id: int
    model: str
    primary: int
    reversed: bool = True


@dataclass(frozen=True)
class ArmModel:
    """An arm type: its bus, its motors in action order, the shadow motors that double some
    of them, and whether a person moves it (`leader`: torque stays off)."""

    name: str
    bus: str
    motors: tuple[MotorSpec, ...]
    leader: bool = False
    gripper: str | None = "gripper"
    description: str = ""
    shadows: tuple[ShadowSpec, ...] = ()

    def __post_init__(self) -> None:
        every = [m.id for m in self.motors] + [s.id for s in self.shadows]
        if len(set(every)) != len(every):
            raise ValueError(f"arm model {self.name}: motor ids repeat: {every}")
        for shadow in self.shadows:
            if shadow.primary not in self.ids:
                raise ValueError(
                    f"arm model {self.name}: {shadow.name} shadows id {shadow.primary}, which "
                    "is none of its joints"
                )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.motors)

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(m.id for m in self.motors)

    @property
    def every_id(self) -> tuple[int, ...]:
        """The joints' ids and the shadows': what must answer a ping and have its torque off."""
        return self.ids + tuple(s.id for s in self.shadows)

    def motor(self, motor_id: int) -> MotorSpec:
        return next(m for m in self.motors if m.id == motor_id)


JOINTS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
# Dynamixel operating modes: 4 extended position (no 0..4095 goal limit, so a joint whose range
# straddles the encoder's wrap still works), 5 current-based position (a gripper that squeezes
# with bounded current instead of stalling at full torque).
DXL_EXTENDED_POSITION = 4
DXL_CURRENT_POSITION = 5


def _six(bus: str, models: Iterable[str], modes: Iterable[int | None]) -> tuple[MotorSpec, ...]:
    return tuple(
        MotorSpec(name, i + 1, model, mode=mode)
        for i, (name, model, mode) in enumerate(zip(JOINTS, models, modes, strict=True))
    )


_KOCH_MODES = (DXL_EXTENDED_POSITION,) * 5 + (DXL_CURRENT_POSITION,)
# ALOHA's follower gripper: Current Limit in units of 2.69 mA, so 300 is 0.8 A of the XM430's
# 3.2 A: enough to hold a cup, little enough that a closed grip on an object neither overheats
# the motor nor trips its overload shutdown (the ALOHA setups use 200-300).
ALOHA_GRIPPER_CURRENT_LIMIT = 300
_ALOHA_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")


def _aloha(
    joints: Iterable[str], gripper: str, shadow: str, *, follower: bool
) -> tuple[tuple[MotorSpec, ...], tuple[ShadowSpec, ...]]:
    """An Interbotix arm as ALOHA uses it: ids 1, 2, 4, 6, 7, 8, 9 for the joints, and ids 3
    and 5 doubling the shoulder (2) and the elbow (4). The follower runs extended position
    mode (a joint whose travel straddles the encoder's wrap still works) and a gripper in
    current-based position mode; the leader's motors are left as they are (its XC430 gripper
    has no current-based mode, and a person moves the arm)."""
    mode = DXL_EXTENDED_POSITION if follower else None
    motors = [
        MotorSpec(name, motor_id, model, mode=mode)
        for name, motor_id, model in zip(_ALOHA_JOINTS, (1, 2, 4, 6, 7, 8), joints, strict=True)
    ]
    motors.append(
        MotorSpec(
            "gripper",
            9,
            gripper,
            mode=DXL_CURRENT_POSITION,
            current_limit=ALOHA_GRIPPER_CURRENT_LIMIT,
        )
        if follower
        else MotorSpec("gripper", 9, gripper)
    )
    shadows = (
        ShadowSpec("shoulder_shadow", 3, shadow, primary=2),
        ShadowSpec("elbow_shadow", 5, shadow, primary=4),
    )
    return tuple(motors), shadows


_ALOHA_FOLLOWER = _aloha(
    ["xm540-w270"] * 5 + ["xm430-w350"], "xm430-w350", "xm540-w270", follower=True
)
_ALOHA_LEADER = _aloha(
    ["xm430-w350"] * 5 + ["xl430-w250"], "xc430-w150", "xm430-w350", follower=False
)
MODELS: dict[str, ArmModel] = {
    "koch": ArmModel(
        "koch",
        "dynamixel",
        _six("dynamixel", ["xl430-w250"] * 2 + ["xl330-m288"] * 4, _KOCH_MODES),
        description="Koch v1.1 follower: 2 XL430-W250 (shoulder), 4 XL330-M288",
    ),
    "koch_leader": ArmModel(
        "koch_leader",
        "dynamixel",
        _six("dynamixel", ["xl330-m077"] * 6, [None] * 6),
        leader=True,
        description="Koch v1.1 leader: 6 XL330-M077, moved by hand",
    ),
    "so100": ArmModel(
        "so100",
        "feetech",
        _six("feetech", ["sts3215"] * 6, [0] * 6),
        description="SO-100 follower: 6 Feetech STS3215",
    ),
    "so100_leader": ArmModel(
        "so100_leader",
        "feetech",
        _six("feetech", ["sts3215"] * 6, [None] * 6),
        leader=True,
        description="SO-100 leader: 6 Feetech STS3215, moved by hand",
    ),
    "so101": ArmModel(
        "so101",
        "feetech",
        _six("feetech", ["sts3215"] * 6, [0] * 6),
        description="SO-101 follower: 6 Feetech STS3215",
    ),
    "so101_leader": ArmModel(
        "so101_leader",
        "feetech",
        _six("feetech", ["sts3215"] * 6, [None] * 6),
        leader=True,
        description="SO-101 leader: 6 Feetech STS3215 (geared 1/345, 1/191, 1/147), by hand",
    ),
    # ALOHA's arms: the shoulder and elbow each have a second motor (ids 3 and 5) that the
    # driver makes a shadow of ids 2 and 4 on connect, so only the primaries are addressed.
    "aloha": ArmModel(
        "aloha",
        "dynamixel",
        _ALOHA_FOLLOWER[0],
        shadows=_ALOHA_FOLLOWER[1],
        description="ALOHA ViperX 300 S follower: 7 XM540-W270 (ids 1-7, 3 and 5 shadowing "
        "the shoulder and elbow), 2 XM430-W350 (wrist_rotate, gripper)",
    ),
    "aloha_leader": ArmModel(
        "aloha_leader",
        "dynamixel",
        _ALOHA_LEADER[0],
        shadows=_ALOHA_LEADER[1],
        leader=True,
        description="ALOHA WidowX 250 leader: 7 XM430-W350 (ids 1-7, 3 and 5 shadowing the "
        "shoulder and elbow), XL430-W250 (wrist_rotate), XC430-W150 (gripper), moved by hand",
    ),
}
DEFAULT_MODEL = {"dynamixel": "koch", "feetech": "so100"}
DEFAULT_LEADER = {"dynamixel": "koch_leader", "feetech": "so100_leader"}


def get_model(name: str | ArmModel, bus: str | None = None) -> ArmModel:
    """An arm model by name, checked against the bus it is to be driven on."""
    if isinstance(name, ArmModel):
        model = name
    else:
        model = MODELS.get(str(name).lower())
        if model is None:
            raise DriverError(f"unknown arm model {name!r}; valid: {', '.join(sorted(MODELS))}")
    if bus is not None and model.bus != bus:
        valid = ", ".join(sorted(n for n, m in MODELS.items() if m.bus == bus))
        raise DriverError(
            f"arm model {model.name} uses {model.bus} motors, not {bus}; models on a {bus} bus: "
            f"{valid}"
        )
    return model


# ---------------------------------------------------------------------------------- the bus
class MotorBus(abc.ABC):
    """One serial bus of servos, driven through the vendor's SDK.

    Everything the two vendors' SDKs share lives here (they descend from the same design: a
    PortHandler, a PacketHandler, GroupSyncRead/Write, the same result codes), so each bus
    supplies only its control table and the few places the protocols really differ: byte
    order and sign encoding, what a homing offset means, how calibration is stored.

    Failures: a motor that answers wrongly or not at all is a one-line `DriverError` naming
    the motor and quoting the SDK; a port that disappears (USB cable out) is `ConnectionLost`.
    Every call holds one lock, so a calibration sampler thread and the caller can share it.
    """

    protocol: str = ""
    device: str = ""  # words for messages, e.g. "Dynamixel bus"
    sdk_module: str = ""
    registers: ClassVar[dict[str, Register]] = {}
    motor_models: ClassVar[dict[str, int]] = {}  # motor type -> model number
    baudrates: ClassVar[dict[int, int]] = {}  # baud register value -> bits per second
    hardware_direction = False  # the motor can reverse its own direction (Drive Mode)

    def __init__(
        self, port: str, *, baudrate: int = 1_000_000, timeout_ms: float | None = None
    ) -> None:
        if baudrate not in self.baudrates.values():
            raise DriverError(
                f"{self.device}: baud rate {baudrate} is not one the motors support; valid: "
                + ", ".join(str(b) for b in sorted(self.baudrates.values()))
            )
        self.port = str(port)
        self.baudrate = int(baudrate)
        self.timeout_ms = None if timeout_ms is None else float(timeout_ms)
        self.labels: dict[int, str] = {}
        """Joint names by id, so messages say which motor of the arm failed."""
        self._lock = threading.RLock()
        self._sdk: Any = None
        self._port: Any = None
        self._ph: Any = None

    # --- protocol hooks -------------------------------------------------------------------
    @abc.abstractmethod
    def _packet_handler(self, sdk: Any) -> Any:
        """The SDK's packet handler for this protocol."""

    @abc.abstractmethod
    def centring_offset(self, present: int) -> int:
        """The homing offset register value that makes a motor reading `present` (with no
        offset applied) read `HALF_TURN`."""

    @abc.abstractmethod
    def reset_calibration(self, motor: MotorSpec) -> None:
        """Clear offset and limits and set the drive direction, so calibration measures raw
        positions (torque must be off)."""

    @abc.abstractmethod
    def apply_calibration(self, motor: MotorSpec, cal: MotorCalibration) -> None:
        """Write a motor's calibration into its registers (torque must be off)."""

    @abc.abstractmethod
    def calibration_matches(self, motor: MotorSpec, cal: MotorCalibration) -> bool:
        """Whether the motor's registers already hold `cal` (so no EEPROM write is needed)."""

    def shadow_changes(self, shadow: ShadowSpec, settings: Mapping[str, int]) -> dict[str, int]:
        """The registers to write into a shadow motor (torque off) so that it obeys its
        primary's id and reads what the primary reads; empty when it already does. Only a bus
        with a Secondary ID has shadows."""
        raise DriverError(
            f"{self.device}: {shadow.name} (id {shadow.id}) is a shadow motor, which needs the "
            "Secondary ID of a Dynamixel bus"
        )

    def align_shadows(self, model: ArmModel, *, follower: bool, write: bool = True) -> bool:
        """Make every shadow of `model` obey its primary (the torque must be off: all of it is
        EEPROM); `write` False only checks. Returns whether any shadow needed a change.

        Called after the primaries' own registers are written, never before: a write to a
        primary reaches its shadows too once they obey its id, and would undo their reversed
        direction. A follower's shadow also gets its primary's settings (operating mode), so
        the two run the same control law."""
        changed = False
        for shadow in model.shadows:
            settings = model.motor(shadow.primary).settings if follower else {}
            changes = self.shadow_changes(shadow, settings)
            if changes:
                changed = True
                if write:
                    log.info("%s: setting up shadow %s: %s", self.port, shadow.name, changes)
                    self.write_eeprom(shadow.id, changes)
        return changed

    # --- connection -----------------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        return self._port is not None

    def connect(self) -> None:
        if self._port is not None:
            return
        sdk = vendor_library(self.sdk_module, self.protocol, self.device)
        if not os.path.exists(self.port):
            raise DriverError(
                f"{self.device}: no serial port {self.port}; plug the USB adapter in and check "
                "the name (ls /dev/ttyUSB* /dev/ttyACM* /dev/serial/by-id/)"
            )
        port = sdk.PortHandler(self.port)
        ph = self._packet_handler(sdk)
        try:
            opened = port.openPort()
            ok = opened and port.setBaudRate(self.baudrate)
        except (OSError, termios.error) as e:
            hint = (
                "add yourself to the dialout group (sudo usermod -aG dialout $USER, then log in "
                "again)"
                if isinstance(e, PermissionError) or "ermission" in str(e)
                else "is it the servo adapter's port, and is no other program using it?"
            )
            raise DriverError(f"{self.device}: cannot open {self.port} ({e}); {hint}") from None
        if not ok:
            raise DriverError(f"{self.device}: cannot set {self.port} to {self.baudrate} baud")
        if self.timeout_ms is not None:
            # The SDKs budget ~34 ms for a reply (two 16 ms USB latency timers); a slow adapter
            # or a loaded machine may need more.
            base, floor = port.setPacketTimeout, self.timeout_ms

            def set_timeout(packet_length: int) -> None:
                base(packet_length)
                port.packet_timeout = max(port.packet_timeout, floor)

            port.setPacketTimeout = set_timeout
        self._sdk, self._port, self._ph = sdk, port, ph

    def disconnect(self) -> None:
        with self._lock:
            port, self._port = self._port, None
            if port is not None:
                try:
                    port.closePort()
                except Exception as e:  # a port that is already gone closes as it can
                    log.debug("closing %s: %s", self.port, e)

    def __enter__(self) -> MotorBus:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    # --- errors ---------------------------------------------------------------------------
    def _name(self, motor_id: int) -> str:
        label = self.labels.get(motor_id)
        return f"motor {motor_id} ({label})" if label else f"motor {motor_id}"

    def _require(self) -> None:
        if self._port is None:
            raise DriverError(f"{self.device} on {self.port} is not connected; call connect()")

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one SDK call on the port, turning a vanished port into `ConnectionLost`."""
        self._require()
        try:
            return fn(self._port, *args)
        except termios.error as e:  # (errno, text)
            self._lost(e.args[-1] if e.args else e)
        except OSError as e:  # pyserial's SerialException among them
            self._lost(e)
        finally:
            if self._port is not None:
                self._port.is_using = False  # an exception mid-packet leaves it set

    def _lost(self, error: BaseException | str) -> None:
        port, self._port = self._port, None
        if port is not None:
            with contextlib.suppress(Exception):  # the port is gone; nothing to release
                port.closePort()
        raise ConnectionLost(
            f"{self.device} on {self.port} is gone ({error}): check the USB cable and the "
            "arm's power, then start again"
        ) from None

    def _check(self, result: int, error: int, motor_id: int, what: str) -> None:
        if result != self._sdk.COMM_SUCCESS:
            if not os.path.exists(self.port):
                self._lost("the port disappeared")
            text = self._ph.getTxRxResult(result)
            hint = (
                ": check its power, its cable and that it was given this id"
                if result == self._sdk.COMM_RX_TIMEOUT
                else ""
            )
            raise DriverError(
                f"{self.device} {self._name(motor_id)} on {self.port}: {what} failed: {text}{hint}"
            )
        if error:
            text = self._ph.getRxPacketError(error)
            raise DriverError(
                f"{self.device} {self._name(motor_id)} on {self.port}: {what} refused: "
                f"{text or f'error byte {error:#04x}'}"
            )

    def _register(self, name: str) -> Register:
        try:
            return self.registers[name]
        except KeyError:
            raise DriverError(
                f"{self.device} has no register {name!r}; known: {', '.join(self.registers)}"
            ) from None

    # --- single motors --------------------------------------------------------------------
    def ping(self, motor_id: int) -> int | None:
        """The motor's model number, or None when nothing answers at that id."""
        with self._lock:
            model, result, error = self._call(self._ph.ping, motor_id)
            if result == self._sdk.COMM_RX_TIMEOUT:
                if not os.path.exists(self.port):
                    self._lost("the port disappeared")
                return None
            self._check(result, error, motor_id, "ping")
            return int(model)

    def read(self, motor_id: int, register: str) -> int:
        reg = self._register(register)
        fn = {1: self._ph.read1ByteTxRx, 2: self._ph.read2ByteTxRx, 4: self._ph.read4ByteTxRx}
        with self._lock:
            value, result, error = self._call(fn[reg.size], motor_id, reg.address)
            self._check(result, error, motor_id, f"reading {register}")
        return reg.decode(value)

    def write(self, motor_id: int, register: str, value: int) -> None:
        reg = self._register(register)
        try:
            raw = reg.encode(value)
        except ValueError as e:
            raise DriverError(f"{self.device} {self._name(motor_id)}: {register} {e}") from None
        fn = {1: self._ph.write1ByteTxRx, 2: self._ph.write2ByteTxRx, 4: self._ph.write4ByteTxRx}
        with self._lock:
            result, error = self._call(fn[reg.size], motor_id, reg.address, raw)
            self._check(result, error, motor_id, f"writing {register}={value}")

    # --- every motor at once --------------------------------------------------------------
    def sync_read(self, register: str, ids: Iterable[int]) -> dict[int, int]:
        """One register of several motors in one exchange (one instruction, one reply each)."""
        reg = self._register(register)
        ids = list(ids)
        with self._lock:
            self._require()
            group = self._sdk.GroupSyncRead(self._port, self._ph, reg.address, reg.size)
            for motor_id in ids:
                group.addParam(motor_id)
            result = self._call(lambda _port: group.txRxPacket())
            if result != self._sdk.COMM_SUCCESS:
                self._diagnose(ids, result, f"sync read of {register}")
            values = {}
            for motor_id in ids:
                if not group.isAvailable(motor_id, reg.address, reg.size):
                    raise DriverError(
                        f"{self.device} {self._name(motor_id)} on {self.port}: no {register} "
                        "in the sync read reply"
                    )
                values[motor_id] = reg.decode(group.getData(motor_id, reg.address, reg.size))
        return values

    def sync_write(self, register: str, values: Mapping[int, int]) -> None:
        """One register of several motors in one packet (no reply: broadcast)."""
        reg = self._register(register)
        with self._lock:
            self._require()
            group = self._sdk.GroupSyncWrite(self._port, self._ph, reg.address, reg.size)
            for motor_id, value in values.items():
                try:
                    raw = reg.encode(value)
                except ValueError as e:
                    raise DriverError(
                        f"{self.device} {self._name(motor_id)}: {register} {e}"
                    ) from None
                group.addParam(motor_id, list(raw.to_bytes(reg.size, "little")))
            result = self._call(lambda _port: group.txPacket())
            if result != self._sdk.COMM_SUCCESS:
                if not os.path.exists(self.port):
                    self._lost("the port disappeared")
                raise DriverError(
                    f"{self.device} on {self.port}: sync write of {register} failed: "
                    f"{self._ph.getTxRxResult(result)}"
                )

    def _diagnose(self, ids: list[int], result: int, what: str) -> None:
        """A group exchange failed: say which motors are silent (or that all are: power)."""
        if not os.path.exists(self.port):
            self._lost("the port disappeared")
        text = self._ph.getTxRxResult(result)
        silent = [i for i in ids if self.ping(i) is None]
        if silent and len(silent) == len(ids):
            self._lost(f"no motor answers, {text}")
        names = ", ".join(self._name(i) for i in silent) or "no single motor"
        raise DriverError(
            f"{self.device} on {self.port}: {what} failed ({text}); silent: {names}: check "
            "the cable between the motors and their ids"
        )

    def set_torque(self, ids: Iterable[int], on: bool) -> None:
        self.sync_write("torque_enable", {i: int(on) for i in ids})

    def write_eeprom(self, motor_id: int, values: Mapping[str, int]) -> None:
        """Write configuration registers (torque must be off); a bus whose EEPROM is
        write-protected lifts the protection around the writes."""
        for name, value in values.items():
            self.write(motor_id, name, value)

    # --- arms -----------------------------------------------------------------------------
    def check_motors(self, model: ArmModel) -> dict[int, int]:
        """Ping every motor an arm model needs and check its type; returns model numbers.

        Done before anything is written, so a wrong port or a mis-numbered motor is reported
        as such instead of as a failed write later."""
        found = {}
        missing: list[MotorSpec | ShadowSpec] = []
        for motor in (*model.motors, *model.shadows):
            self.labels.setdefault(motor.id, motor.name)
            number = self.ping(motor.id)
            if number is None:
                missing.append(motor)
                continue
            expected = self.motor_models.get(motor.model)
            if expected is not None and number != expected:
                actual = next((k for k, v in self.motor_models.items() if v == number), "?")
                raise DriverError(
                    f"{self.device} {self._name(motor.id)} on {self.port} is model {number} "
                    f"({actual}), the {model.name} arm needs {motor.model} ({expected}) there; "
                    "check the motor's id"
                )
            found[motor.id] = number
        if missing:
            what = ", ".join(
                f"{m.name} (id {m.id}, the second motor of id {m.primary})"
                if isinstance(m, ShadowSpec)
                else f"{m.name} (id {m.id})"
                for m in missing
            )
            if len(missing) == len(model.every_id):
                raise DriverError(
                    f"{self.device}: no motor answers on {self.port} at {self.baudrate} baud; "
                    f"check the arm's power supply, the port and the baud rate "
                    f"(the {model.name} arm needs ids {', '.join(map(str, model.every_id))})"
                )
            raise DriverError(
                f"{self.device} on {self.port}: {what} do(es) not answer; check their cables "
                "and that each motor was given its id"
            )
        return found


BUSES: dict[str, tuple[str, str]] = {
    "dynamixel": ("robots.dynamixel", "DynamixelBus"),
    "feetech": ("robots.feetech", "FeetechBus"),
}
"""Protocol name → (module, class) of its `MotorBus`. The protocol modules build on this one,
so they are found by name, as `robots.registry` finds drivers, and only the named one (with its
vendor SDK) is imported."""


def open_bus(
    bus: str, port: str, *, baudrate: int = 1_000_000, timeout_ms: float | None = None
) -> MotorBus:
    """A bus by protocol name ("dynamixel" or "feetech"), not yet connected."""
    if bus not in BUSES:
        raise DriverError(f"unknown servo bus {bus!r}; valid: {', '.join(BUSES)}")
    module, name = BUSES[bus]
    cls = getattr(importlib.import_module(module), name)
    return cls(port, baudrate=baudrate, timeout_ms=timeout_ms)


# ---------------------------------------------------------------------------------- calibration
@dataclass(frozen=True)
class MotorCalibration:
    """One motor's calibration. `homing_offset` is the register value (ticks) that makes the
    middle pose read `HALF_TURN`; `drive_mode` 1 reverses the joint; `range_min`/`range_max`
    are the ends of travel as the motor reports them once the offset is applied."""

    id: int
    homing_offset: int
    drive_mode: int
    range_min: int
    range_max: int

    def to_json(self) -> dict[str, int]:
        return {
            "id": self.id,
            "homing_offset": self.homing_offset,
            "drive_mode": self.drive_mode,
            "range_min": self.range_min,
            "range_max": self.range_max,
        }


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


# ---------------------------------------------------------------------------------- joints
class JointArm:
    """An arm model on its bus with its calibration: positions in joint units (degrees, the
    gripper in percent) instead of ticks. The follower `ServoArm` and the leader-arm teleop
    are both this plus what they do with it."""

    def __init__(
        self,
        port: str,
        *,
        bus: str,
        model: str | None = None,
        calibration: str | Path | None = None,
        baudrate: int = 1_000_000,
        timeout_ms: float | None = None,
        leader: bool = False,
    ) -> None:
        defaults = DEFAULT_LEADER if leader else DEFAULT_MODEL
        if bus not in defaults:
            raise DriverError(f"unknown servo bus {bus!r}; valid: dynamixel, feetech")
        self.model = get_model(model or defaults[bus], bus)
        self.port = str(port)
        self.bus = open_bus(bus, port, baudrate=baudrate, timeout_ms=timeout_ms)
        self.bus.labels = {m.id: m.name for m in (*self.model.motors, *self.model.shadows)}
        self.calibration_path = Path(calibration or default_calibration_path(self.model.name))
        self.hint = calibrate_hint(bus, port, self.model.name, self.calibration_path)
        self.calibration: Calibration | None = None
        if self.calibration_path.exists():
            self._load()

    def _load(self) -> Calibration:
        cal = Calibration.load(self.calibration_path, self.hint)
        cal.check(self.model, self.calibration_path, self.hint)
        self.calibration = cal
        return cal

    @property
    def names(self) -> tuple[str, ...]:
        return self.model.names

    @property
    def units(self) -> tuple[str, ...]:
        return tuple("%" if n == self.model.gripper else "deg" for n in self.names)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Each joint's calibrated travel in joint units (a half turn either way, the gripper
        0..100, before calibration)."""
        low, high = [], []
        for motor in self.model.motors:
            if motor.name == self.model.gripper:
                low.append(0.0)
                high.append(100.0)
            elif self.calibration is None:
                low.append(-180.0)
                high.append(180.0)
            else:
                cal = self.calibration.motors[motor.name]
                ends = sorted(self._to_units(motor, cal, t) for t in (cal.range_min, cal.range_max))
                low.append(ends[0])
                high.append(ends[1])
        return np.array(low), np.array(high)

    def _sign(self, cal: MotorCalibration) -> int:
        # A bus whose motors reverse themselves (Dynamixel Drive Mode) already reports the
        # joint's direction; otherwise the reversal is done here.
        return -1 if cal.drive_mode and not self.bus.hardware_direction else 1

    def _to_units(self, motor: MotorSpec, cal: MotorCalibration, ticks: float) -> float:
        sign = self._sign(cal)
        if motor.name == self.model.gripper:
            span = max(cal.range_max - cal.range_min, 1)
            frac = (ticks - cal.range_min) / span if sign > 0 else (cal.range_max - ticks) / span
            return 100.0 * frac
        return sign * (ticks - HALF_TURN) * 360.0 / RESOLUTION

    def _to_ticks(self, motor: MotorSpec, cal: MotorCalibration, value: float) -> int:
        sign = self._sign(cal)
        if motor.name == self.model.gripper:
            span = cal.range_max - cal.range_min
            frac = value / 100.0
            ticks = cal.range_min + frac * span if sign > 0 else cal.range_max - frac * span
        else:
            ticks = HALF_TURN + sign * value * RESOLUTION / 360.0
        return int(np.clip(round(ticks), cal.range_min, cal.range_max))

    def open(self, *, torque: bool) -> None:
        """Connect, check the motors, load the calibration and make sure the motors hold it
        (and, for a follower, the model's settings: operating modes, current limits), set up
        the shadow motors; then (follower) set every goal to where the joint is and switch the
        torque on, so the arm never jumps to a goal left over from before.

        Shadows get their torque and goals only through their primary's id: a shadow whose
        Secondary ID did not take would stay limp rather than hold a stale goal against its
        primary."""
        bus = self.bus
        model = self.model
        bus.connect()
        try:
            bus.check_motors(model)
            cal = self._load()  # the newest calibration on disk, whatever was loaded before
            ids = list(model.ids)
            stale = [
                m
                for m in model.motors
                if not bus.calibration_matches(m, cal.motors[m.name])
                or (torque and any(bus.read(m.id, r) != v for r, v in m.settings.items()))
            ]
            if stale or bus.align_shadows(model, follower=torque, write=False):
                bus.set_torque(model.every_id, False)  # offsets, modes and ids live in EEPROM
                for motor in stale:
                    bus.apply_calibration(motor, cal.motors[motor.name])
                    if torque:
                        bus.write_eeprom(motor.id, motor.settings)
                bus.align_shadows(model, follower=torque)
            if torque:
                present = bus.sync_read("present_position", ids)
                bus.sync_write("goal_position", present)
                bus.set_torque(ids, True)
            else:
                bus.set_torque(model.every_id, False)
        except BaseException:
            bus.disconnect()
            raise

    def close(self, *, torque_off: bool) -> None:
        bus = self.bus
        if not bus.is_connected:
            return
        try:
            if torque_off:
                bus.set_torque(self.model.every_id, False)
        except DriverError as e:
            log.warning("%s: could not switch the torque off: %s", self.port, e)
        finally:
            bus.disconnect()

    def read(self) -> tuple[np.ndarray, float]:
        """Joint positions in joint units, and the time they were read."""
        cal = self._calibration()
        ticks = self.bus.sync_read("present_position", self.model.ids)
        stamp = time.time()
        values = np.array(
            [self._to_units(m, cal.motors[m.name], ticks[m.id]) for m in self.model.motors]
        )
        return values, stamp

    def goal_ticks(self, values: np.ndarray) -> dict[int, int]:
        cal = self._calibration()
        return {
            m.id: self._to_ticks(m, cal.motors[m.name], float(v))
            for m, v in zip(self.model.motors, values, strict=True)
        }

    def write(self, values: np.ndarray) -> None:
        """Every joint's goal in one sync write."""
        self.bus.sync_write("goal_position", self.goal_ticks(values))

    def _calibration(self) -> Calibration:
        if self.calibration is None:
            raise DriverError(f"no calibration at {self.calibration_path}: {self.hint}")
        return self.calibration


# ---------------------------------------------------------------------------------- the robot
# Per step at 30 Hz: 10 degrees for a joint, 20 % of the gripper's travel; joints no faster than
# 3 rad/s (172 deg/s, 5.7 degrees per step), about a person's brisk move of a leader arm.
# The watchdog holds the arm after 5 silent periods (167 ms).
SERVO_SAFETY: dict[str, Any] = {"max_speed": 3.0, "watchdog_periods": 5}


class ServoArm(Robot):
    """A follower arm of hobby servos (see the module docstring for the action convention).

    Options: `bus` "dynamixel" or "feetech" (set by the robot name's prefix), `model` (koch,
    so100, so101, aloha; leaders too, though a leader is meant for `LeaderArmTeleop`),
    `calibration` (JSON path, default calibration/<model>.json), `baudrate`, `timeout_ms`
    (least time to wait for a motor's reply), `fps` (command rate), `torque_off_on_disconnect`
    (True: the arm goes limp when the session ends, after holding its pose; False: it keeps
    holding, and keeps drawing current, until powered off).
    """

    def __init__(
        self,
        port: str,
        *,
        bus: str,
        model: str | None = None,
        calibration: str | None = None,
        baudrate: int = 1_000_000,
        timeout_ms: float | None = None,
        fps: float = 30.0,
        torque_off_on_disconnect: bool = True,
    ) -> None:
        self.arm = JointArm(
            port,
            bus=bus,
            model=model,
            calibration=calibration,
            baudrate=baudrate,
            timeout_ms=timeout_ms,
        )
        self.name = f"{bus}:{port}"
        self._fps = float(fps)
        if not self._fps > 0:
            raise DriverError(f"{self.name}: fps must be positive, got {fps}")
        self.torque_off_on_disconnect = bool(torque_off_on_disconnect)
        self._lock = threading.RLock()
        self._connected = False
        self._latest: np.ndarray | None = None
        self._latest_at = -math.inf

    @property
    def model(self) -> ArmModel:
        return self.arm.model

    @property
    def action_spec(self) -> ActionSpec:
        low, high = self.arm.bounds()
        return ActionSpec(
            kind="joint_absolute",
            names=self.arm.names,
            units=self.arm.units,
            low=low,
            high=high,
            frame="joint",
        )

    @property
    def observation_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"joint_pos": (len(self.arm.names),)}

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        with self._lock:
            if self._connected:
                return
            self.arm.open(torque=not self.model.leader)
            self._connected = True

    def disconnect(self) -> None:
        """Hold the current pose, then (by default) switch the torque off."""
        with self._lock:
            if not self._connected:
                return
            self._connected = False
            try:
                if self.arm.bus.is_connected and not self.model.leader:
                    positions, _ = self.arm.read()
                    self.arm.write(positions)
            except DriverError as e:  # the link is gone: the motors keep their last goal
                log.warning("%s: could not hold the pose on disconnect: %s", self.name, e)
            self.arm.close(torque_off=self.torque_off_on_disconnect)

    def observe(self) -> dict[str, Any]:
        with self._lock:
            self._require()
            positions, stamp = self.arm.read()
            self._latest, self._latest_at = positions, time.monotonic()
        return {"joint_pos": positions, "timestamp": stamp}

    def hold(self) -> np.ndarray:
        """The current joint positions: the latest observation when it is less than a period
        old (the safety filter asks for this on every command; reading the bus again would
        halve the rate), else a fresh read."""
        with self._lock:
            if self._latest is None or time.monotonic() - self._latest_at > 1.0 / self._fps:
                return np.asarray(self.observe()["joint_pos"], dtype=np.float64).copy()
            return self._latest.copy()

    def command(self, action: np.ndarray) -> np.ndarray:
        action = self.checked_action(action)
        spec = self.action_spec
        sent = np.clip(action, spec.low, spec.high)
        with self._lock:
            self._require()
            if self.model.leader:
                raise DriverError(
                    f"{self.name}: the {self.model.name} arm is a leader (torque off); "
                    "command a follower model"
                )
            self.arm.write(sent)
        return sent

    def _require(self) -> None:
        if not self._connected:
            raise DriverError(f"{self.name} is not connected; call connect() or use `with`")

    def identity(self) -> dict[str, Any]:
        cal = self.arm.calibration
        return {
            "robot": self.name,
            "driver": type(self).__name__,
            "model": self.model.name,
            "bus": self.model.bus,
            "motors": {m.name: {"id": m.id, "model": m.model} for m in self.model.motors},
            "shadows": {
                s.name: {"id": s.id, "model": s.model, "primary": s.primary}
                for s in self.model.shadows
            },
            "calibration": str(self.arm.calibration_path),
            "calibration_data": cal.to_json() if cal is not None else None,
        }

    def safety_defaults(self) -> dict[str, Any]:
        step = [10.0 if u == "deg" else 20.0 for u in self.arm.units]
        return {**SERVO_SAFETY, "max_step": step}
