"""One serial bus of servos, vendor-neutral: `MotorBus`, the registers it reads and writes, and
`open_bus`, which picks the vendor half by name.

The Dynamixel and Feetech SDKs descend from one design (a PortHandler, a PacketHandler,
GroupSyncRead/Write, the same result codes), so what every bus shares lives here: connecting,
registers by name, sync read and write, one-line errors that name the motor, a vanished port as
`ConnectionLost`, checking an arm's motors, setting up shadow motors. The vendor halves beside
it (`robots.servo.dynamixel`, `robots.servo.feetech`) supply only their control tables and the
few places the protocols really differ, so a fix to the shared part reaches both.

The arm models (`robots.servo.models`) are what the bus checks motors against; calibration
(`robots.servo.calibration`) drives a bus, and the bus only stores a calibration in the motors
the way its vendor's registers want it.
"""

from __future__ import annotations

import abc
import contextlib
import importlib
import logging
import os
import termios
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from robots.base import ConnectionLost, DriverError, vendor_library
from robots.servo.models import ArmModel, MotorCalibration, MotorSpec, ShadowSpec

__all__ = ["BUSES", "MotorBus", "Register", "open_bus"]

log = logging.getLogger(__name__)


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
    "dynamixel": ("robots.servo.dynamixel", "DynamixelBus"),
    "feetech": ("robots.servo.feetech", "FeetechBus"),
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
