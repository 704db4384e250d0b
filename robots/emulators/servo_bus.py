"""Emulated servo buses on a pseudo-terminal, byte for byte what the motors send.

The driver under test opens the pty's slave end with the vendor's SDK, exactly as it opens a
USB adapter; a thread here answers on the master end as a chain of motors would: Dynamixel
Protocol 2.0 (FF FF FD 00 header, CRC-16, byte stuffing) or Feetech SCS/STS (FF FF header,
inverted-sum checksum). Each motor has a control table and a shaft that moves toward its goal
at a bounded speed while the torque is on; with the torque off a test (or `sweep`) moves it,
as a person moves a leader arm. An id nobody has stays silent, so the SDK times out as on a
real bus. The homing offset, drive direction, position limits and the STS EEPROM lock act as
the motors' firmware applies them, so calibration is tested through the registers themselves.
A Dynamixel motor's Secondary ID acts as the e-manual says: the motor also executes writes,
registered writes and its slot of sync writes addressed to that id, silently, while reads and
pings to it are answered by the motor whose own id it is (a shadow motor doubling a joint).
Each Dynamixel type accepts only the operating modes its firmware has (no current-based modes
on an XL430 or XC430: no current sensor) and a Current Limit up to its own maximum.

    with ServoBusEmulator("dynamixel", {1: "xl430-w250", 2: "xl330-m288"}) as bus:
        arm = ServoArm(bus.port, bus="dynamixel", ...)

From a shell, for trying the CLI without hardware (prints the port to use):

    python -m robots.emulators.servo_bus --protocol dynamixel --model koch --sweep
    python -m robots.emulators.servo_bus --protocol dynamixel --model aloha  # with ids 3, 5
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import select
import threading
import time
import tty
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = [
    "MOTOR_TYPES",
    "Packet",
    "ServoBusEmulator",
    "dynamixel_crc",
    "dynamixel_packet",
    "parse_dynamixel",
    "parse_scs",
    "scs_packet",
]

# motor type -> (protocol, model number)
MOTOR_TYPES: dict[str, tuple[str, int]] = {
    "xl330-m077": ("dynamixel", 1190),
    "xl330-m288": ("dynamixel", 1200),
    "xl430-w250": ("dynamixel", 1060),
    "xm430-w350": ("dynamixel", 1020),
    "xm540-w270": ("dynamixel", 1120),
    "xc430-w150": ("dynamixel", 1070),
    "sts3215": ("feetech", 777),
}
# Dynamixel model number -> its Current Limit's factory value, which is also its maximum
# (XL330: 1 mA units; XM430/XM540: 2.69 mA). Absent: no current sensor (XL430, XC430), so
# no Current Limit register and no current-based operating modes.
DXL_CURRENT_LIMIT: dict[int, int] = {1190: 1750, 1200: 1750, 1020: 1193, 1120: 2047}
# Operating modes: 0 current, 1 velocity, 3 position, 4 extended position, 5 current-based
# position, 16 PWM.
DXL_MODES_WITH_CURRENT = frozenset({0, 1, 3, 4, 5, 16})
DXL_MODES_WITHOUT_CURRENT = frozenset({1, 3, 4, 16})

BROADCAST = 0xFE
TURN = 4096

# Instructions both protocols share the numbers of.
PING, READ, WRITE, REG_WRITE, ACTION = 0x01, 0x02, 0x03, 0x04, 0x05
SYNC_READ, SYNC_WRITE = 0x82, 0x83
DXL_STATUS = 0x55
# Dynamixel status error numbers.
DXL_INSTRUCTION_ERROR, DXL_CRC_ERROR, DXL_RANGE_ERROR, DXL_LENGTH_ERROR = 0x02, 0x03, 0x04, 0x05
DXL_LIMIT_ERROR, DXL_ACCESS_ERROR = 0x06, 0x07
DXL_NO_SECONDARY = 253  # a Secondary ID of this or more is off


@dataclass(frozen=True)
class Packet:
    """One decoded packet (instruction or status): for a status packet `instruction` is the
    error byte in SCS/STS and 0x55 in Dynamixel (whose error is `params[0]`)."""

    id: int
    instruction: int
    params: bytes
    valid: bool = True


# ---------------------------------------------------------------------------------- Dynamixel
DXL_HEADER = b"\xff\xff\xfd"


def dynamixel_crc(data: bytes) -> int:
    """CRC-16 of Protocol 2.0: polynomial 0x8005, initial value 0, no reflection."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _stuff(body: bytes) -> bytes:
    """Add a 0xFD after every FF FF FD inside a packet, so no header appears in its body."""
    out = bytearray()
    for byte in body:
        out.append(byte)
        if byte == 0xFD and out[-3:-1] == b"\xff\xff" and len(out) >= 3:
            out.append(0xFD)
    return bytes(out)


def _unstuff(body: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(body):
        out.append(body[i])
        stuffed = i + 1 < len(body) and body[i + 1] == 0xFD
        if body[i] == 0xFD and out[-3:-1] == b"\xff\xff" and stuffed:
            i += 1  # skip the stuffed copy
        i += 1
    return bytes(out)


def dynamixel_packet(motor_id: int, instruction: int, params: bytes = b"") -> bytes:
    """A Protocol 2.0 packet: header, reserved 0, id, length, stuffed body, CRC (low first)."""
    body = _stuff(bytes([instruction]) + bytes(params))
    length = len(body) + 2
    head = DXL_HEADER + bytes([0x00, motor_id, length & 0xFF, length >> 8])
    crc = dynamixel_crc(head + body)
    return head + body + bytes([crc & 0xFF, crc >> 8])


def parse_dynamixel(buf: bytes | bytearray) -> tuple[Packet | None, int]:
    """The first whole packet in `buf` and how many bytes it (and any noise before it) took;
    (None, n) when no whole packet is there yet (the first n bytes are noise to drop)."""
    start = bytes(buf).find(DXL_HEADER)
    if start < 0:
        return None, max(0, len(buf) - 2)
    if len(buf) < start + 7:
        return None, start
    if buf[start + 3] != 0x00:  # FF FF FD FD is stuffed data, not a header
        return None, start + 1
    length = buf[start + 5] | buf[start + 6] << 8
    if length < 3 or length > 1024:
        return None, start + 1
    end = start + 7 + length
    if len(buf) < end:
        return None, start
    raw = bytes(buf[start:end])
    valid = dynamixel_crc(raw[:-2]) == (raw[-2] | raw[-1] << 8)
    body = _unstuff(raw[7:-2])
    return Packet(raw[4], body[0], body[1:], valid), end


# ---------------------------------------------------------------------------------- SCS / STS
def scs_packet(motor_id: int, instruction: int, params: bytes = b"") -> bytes:
    """An SCS/STS packet: FF FF, id, length (params + 2), instruction or error, params,
    checksum (inverted low byte of the sum from id on)."""
    body = bytes([motor_id, len(params) + 2, instruction]) + bytes(params)
    return b"\xff\xff" + body + bytes([~sum(body) & 0xFF])


def parse_scs(buf: bytes | bytearray) -> tuple[Packet | None, int]:
    """Like `parse_dynamixel`, for SCS/STS framing."""
    start = bytes(buf).find(b"\xff\xff")
    if start < 0:
        return None, max(0, len(buf) - 1)
    if len(buf) < start + 4:
        return None, start
    if buf[start + 2] == 0xFF:  # FF FF FF: the header starts one byte later
        return None, start + 1
    length = buf[start + 3]
    if length < 2:
        return None, start + 1
    end = start + 4 + length
    if len(buf) < end:
        return None, start
    raw = bytes(buf[start:end])
    valid = (~sum(raw[2:-1]) & 0xFF) == raw[-1]
    return Packet(raw[2], raw[4], raw[5:-1], valid), end


# ---------------------------------------------------------------------------------- motors
def _le(value: int, size: int) -> bytes:
    return (int(value) & ((1 << 8 * size) - 1)).to_bytes(size, "little")


class _Motor:
    """A control table and a shaft. `raw` is where the shaft physically is, in encoder ticks
    (what the motor reads with no offset, turning the normal way)."""

    TABLE_SIZE = 256
    PRESENT = 0  # present position address
    GOAL = 0
    TORQUE = 0
    ID = 0
    EEPROM_END = 0  # addresses below are configuration (EEPROM)
    READ_ONLY: tuple[range, ...] = ()

    def __init__(self, motor_id: int, number: int, raw: float, speed: float) -> None:
        self.table = bytearray(self.TABLE_SIZE)
        self.number = number
        self.raw = float(raw)
        self.speed = float(speed)
        self.sweep = 0.0  # amplitude (ticks) of the hand-moved wander while torque is off
        self.sweep_phase = 0.0
        self.sweep_center = float(raw)
        self.pending: tuple[int, bytes] | None = None  # a registered write awaiting Action
        self._t = time.monotonic()
        self._t0 = self._t
        self.defaults(motor_id)
        self.saved = bytearray(self.table[: self.EEPROM_END])
        self.set_goal_to_present()

    # to fill in per protocol
    def defaults(self, motor_id: int) -> None: ...

    def present(self) -> int: ...

    def target(self) -> float: ...

    def check_write(self, address: int, data: bytes) -> int:
        return 0

    # shared behaviour
    def get(self, address: int, size: int, signed: bool = False) -> int:
        return int.from_bytes(self.table[address : address + size], "little", signed=signed)

    def put(self, address: int, size: int, value: int) -> None:
        self.table[address : address + size] = _le(value, size)

    @property
    def id(self) -> int:
        return self.table[self.ID]

    @property
    def torque(self) -> bool:
        return bool(self.table[self.TORQUE])

    @property
    def secondary_id(self) -> int | None:
        """The second id this motor obeys (silently), if any."""
        return None

    def register_write(self, address: int, data: bytes) -> int:
        """Check a write now and keep it for the next Action, as Reg Write does."""
        if address + len(data) > self.TABLE_SIZE or not data:
            return self.access_error
        self.refresh()
        error = self.check_write(address, data)
        if not error:
            self.pending = (address, bytes(data))
        return error

    def action(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            self.write(*pending)

    def advance(self) -> None:
        now = time.monotonic()
        dt, self._t = now - self._t, now
        if self.torque:
            error = self.target() - self.raw
            self.raw += max(-self.speed * dt, min(self.speed * dt, error))
        elif self.sweep:
            t = now - self._t0
            self.raw = self.sweep_center + self.sweep * math.sin(
                2 * math.pi * t / 6.0 + self.sweep_phase
            )

    def refresh(self) -> None:
        """Bring the read-only registers up to date with the shaft."""
        self.advance()
        self.put(self.PRESENT, self.PRESENT_SIZE, self.present())

    PRESENT_SIZE = 2

    def set_goal_to_present(self) -> None:
        self.refresh()
        self.put(self.GOAL, self.PRESENT_SIZE, self.present())

    def read(self, address: int, size: int) -> tuple[int, bytes]:
        if address + size > self.TABLE_SIZE or size == 0:
            return self.access_error, b""
        self.refresh()
        return 0, bytes(self.table[address : address + size])

    access_error = DXL_ACCESS_ERROR

    def write(self, address: int, data: bytes) -> int:
        if address + len(data) > self.TABLE_SIZE or not data:
            return self.access_error
        self.refresh()
        error = self.check_write(address, data)
        if error:
            return error
        torque_before = self.torque
        self.table[address : address + len(data)] = data
        self.wrote(address, data)
        if self.torque and not torque_before:
            self._t = time.monotonic()
        return 0

    def wrote(self, address: int, data: bytes) -> None: ...


class _DynamixelMotor(_Motor):
    """An X-series motor: Present Position = direction × shaft + Homing Offset; goals are in
    the same frame; EEPROM (below 64) only writable with the torque off."""

    TABLE_SIZE = 147
    PRESENT, PRESENT_SIZE, GOAL, TORQUE, ID = 132, 4, 116, 64, 7
    HOMING, DRIVE, MODE, SECONDARY, MAX_LIMIT, MIN_LIMIT = 20, 10, 11, 12, 48, 52
    CURRENT_LIMIT, GOAL_CURRENT, REGISTERED = 38, 102, 69
    EEPROM_END = 64
    READ_ONLY = (range(0, 7), range(69, 71), range(120, 147))

    @property
    def current_limit_max(self) -> int | None:
        return DXL_CURRENT_LIMIT.get(self.number)

    @property
    def secondary_id(self) -> int | None:
        value = self.table[self.SECONDARY]
        return value if value < DXL_NO_SECONDARY and value != self.id else None

    def defaults(self, motor_id: int) -> None:
        self.put(0, 2, self.number)
        self.table[6] = 52  # firmware version
        self.table[7] = motor_id
        self.table[8] = 3  # 1 Mbps
        self.table[9] = 250
        self.table[11] = 3  # position control
        self.table[self.SECONDARY] = 255  # off
        self.table[13] = 2  # protocol 2.0
        self.put(24, 4, 10)
        self.table[31] = 80
        self.put(32, 2, 140)
        self.put(34, 2, 60)
        self.put(36, 2, 885)
        if self.current_limit_max is not None:
            self.put(self.CURRENT_LIMIT, 2, self.current_limit_max)
            self.put(self.GOAL_CURRENT, 2, self.current_limit_max)
        self.put(44, 4, 445)
        self.put(self.MAX_LIMIT, 4, TURN - 1)
        self.put(self.MIN_LIMIT, 4, 0)
        self.table[63] = 52
        self.table[68] = 2  # status return level: reply to everything
        self.put(144, 2, 120)
        self.table[146] = 30

    def direction(self) -> int:
        return -1 if self.table[self.DRIVE] & 0x01 else 1

    def present(self) -> int:
        return self.direction() * round(self.raw) + self.get(self.HOMING, 4, signed=True)

    def target(self) -> float:
        goal = self.get(self.GOAL, 4, signed=True)
        return float(self.direction() * (goal - self.get(self.HOMING, 4, signed=True)))

    def refresh(self) -> None:
        super().refresh()
        moving = self.torque and abs(self.target() - self.raw) > 1
        self.table[122] = int(moving)

    def check_write(self, address: int, data: bytes) -> int:
        end = address + len(data)
        if any(address < r.stop and r.start < end for r in self.READ_ONLY):
            return DXL_ACCESS_ERROR
        if address < self.EEPROM_END and self.torque:
            return DXL_ACCESS_ERROR
        if address <= self.MODE < end:
            has_current = self.current_limit_max is not None
            modes = DXL_MODES_WITH_CURRENT if has_current else DXL_MODES_WITHOUT_CURRENT
            if data[self.MODE - address] not in modes:
                return DXL_RANGE_ERROR
        if address < self.CURRENT_LIMIT + 2 and end > self.CURRENT_LIMIT:
            if self.current_limit_max is None:
                return DXL_ACCESS_ERROR  # no such register without a current sensor
            if address != self.CURRENT_LIMIT or len(data) < 2:
                return DXL_ACCESS_ERROR  # half a register
            if int.from_bytes(data[:2], "little") > self.current_limit_max:
                return DXL_RANGE_ERROR
        goal = range(self.GOAL, self.GOAL + 4)
        if address in goal and self.table[self.MODE] == 3:
            value = int.from_bytes(data[:4].ljust(4, b"\0"), "little", signed=True)
            low = self.get(self.MIN_LIMIT, 4, signed=True)
            high = self.get(self.MAX_LIMIT, 4, signed=True)
            if not low <= value <= high:
                return DXL_LIMIT_ERROR
        return 0

    def wrote(self, address: int, data: bytes) -> None:
        end = min(address + len(data), self.EEPROM_END)
        if address < end:
            self.saved[address:end] = self.table[address:end]

    def register_write(self, address: int, data: bytes) -> int:
        error = super().register_write(address, data)
        self.table[self.REGISTERED] = int(self.pending is not None)
        return error

    def action(self) -> None:
        super().action()
        self.table[self.REGISTERED] = 0


class _StsMotor(_Motor):
    """A Feetech STS3215: Present Position = (shaft - Offset) modulo a turn, Offset stored as
    sign and magnitude (bit 11); goals clamped to the angle limits; EEPROM writes with Lock = 1
    act at once but are lost at the next power cycle."""

    TABLE_SIZE = 87
    PRESENT, PRESENT_SIZE, GOAL, TORQUE, ID = 56, 2, 42, 40, 5
    OFFSET, MIN_LIMIT, MAX_LIMIT, LOCK = 31, 9, 11, 55
    EEPROM_END = 40
    READ_ONLY = (range(0, 5), range(56, 87))
    access_error = 0x08

    def defaults(self, motor_id: int) -> None:
        self.table[0], self.table[1] = 3, 10  # firmware
        self.put(3, 2, self.number)
        self.table[5] = motor_id
        self.table[6] = 0  # 1 Mbps
        self.table[8] = 1  # answer every instruction
        self.put(self.MIN_LIMIT, 2, 0)
        self.put(self.MAX_LIMIT, 2, TURN - 1)
        self.table[13] = 70
        self.table[14], self.table[15] = 140, 40
        self.put(16, 2, 1000)
        self.table[21], self.table[22] = 32, 32
        self.table[33] = 0  # position mode
        self.put(48, 2, 1000)
        self.table[self.LOCK] = 1
        self.table[62] = 120
        self.table[63] = 30

    def offset(self) -> int:
        raw = self.get(self.OFFSET, 2)
        magnitude = raw & 0x7FF
        return -magnitude if raw & 0x800 else magnitude

    def present(self) -> int:
        return (round(self.raw) - self.offset()) % TURN

    def target(self) -> float:
        goal = self.get(self.GOAL, 2)
        low, high = self.get(self.MIN_LIMIT, 2), self.get(self.MAX_LIMIT, 2)
        if high > low:
            goal = max(low, min(high, goal))
        return float((goal + self.offset()) % TURN)

    def refresh(self) -> None:
        super().refresh()
        self.table[66] = int(self.torque and abs(self.target() - self.raw) > 1)

    def check_write(self, address: int, data: bytes) -> int:
        end = address + len(data)
        if any(address < r.stop and r.start < end for r in self.READ_ONLY):
            return self.access_error
        return 0

    def wrote(self, address: int, data: bytes) -> None:
        if address < self.EEPROM_END and not self.table[self.LOCK]:
            end = min(address + len(data), self.EEPROM_END)
            self.saved[address:end] = self.table[address:end]


# ---------------------------------------------------------------------------------- the bus
class ServoBusEmulator:
    """A chain of emulated motors behind a pty; see the module docstring.

    `motors`: id -> motor type (`MOTOR_TYPES`). `positions`: id -> starting shaft position in
    ticks (default mid-turn, 2048). `speed`: how fast a torqued shaft moves (ticks/s).
    `sweep`: with the torque off, every shaft wanders through ±`sweep` ticks (6 s period), so
    calibration and a leader arm can be tried from a shell with nobody moving anything.
    """

    def __init__(
        self,
        protocol: str,
        motors: Mapping[int, str],
        *,
        positions: Mapping[int, float] | None = None,
        speed: float = 4000.0,
        sweep: float = 0.0,
    ) -> None:
        if protocol not in ("dynamixel", "feetech"):
            raise ValueError(f"protocol must be dynamixel or feetech, got {protocol!r}")
        self.protocol = protocol
        cls = _DynamixelMotor if protocol == "dynamixel" else _StsMotor
        self._motors: dict[int, _Motor] = {}
        for motor_id, kind in motors.items():
            if kind not in MOTOR_TYPES:
                raise ValueError(f"unknown motor type {kind!r}; known: {', '.join(MOTOR_TYPES)}")
            kind_protocol, number = MOTOR_TYPES[kind]
            if kind_protocol != protocol:
                raise ValueError(f"{kind} is a {kind_protocol} motor, not {protocol}")
            start = (positions or {}).get(motor_id, TURN // 2)
            motor = cls(int(motor_id), number, start, speed)
            motor.sweep = float(sweep)
            motor.sweep_phase = 0.9 * motor_id
            self._motors[int(motor_id)] = motor
        self._parse = parse_dynamixel if protocol == "dynamixel" else parse_scs
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self.instructions: Counter[int] = Counter()
        """Instruction packets received, by instruction byte."""
        self.bad_packets = 0
        self._master: int | None = None
        self._slave: int | None = None
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None
        self.port = ""

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> ServoBusEmulator:
        if self._thread is not None:
            return self
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing: bytes pass as they are
        self._master, self._slave = master, slave
        self.port = os.ttyname(slave)
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._serve, name="servo-bus-emulator", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop answering and remove the port."""
        thread, self._thread = self._thread, None
        if thread is not None:
            os.write(self._wake_w, b"x")
            thread.join(timeout=5.0)
        for fd in (self._master, self._slave, self._wake_r, self._wake_w):
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None
        self._wake_r = self._wake_w = -1

    def unplug(self) -> None:
        """Pull the USB cable: the port goes away under the driver's feet."""
        self.close()

    def __enter__(self) -> ServoBusEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- what tests look at and do ----------------------------------------------------------
    def _motor(self, motor_id: int) -> _Motor:
        for motor in self._motors.values():
            if motor.id == motor_id:
                return motor
        raise KeyError(f"no emulated motor with id {motor_id}")

    @property
    def ids(self) -> list[int]:
        with self._lock:
            return sorted(m.id for m in self._motors.values())

    def set_position(self, motor_id: int, ticks: float) -> None:
        """Move a shaft by hand to `ticks` (raw encoder position: no offset, normal direction)."""
        with self._lock:
            motor = self._motor(motor_id)
            motor.advance()
            motor.raw = float(ticks)
            motor.sweep = 0.0

    def position(self, motor_id: int) -> float:
        """Where the shaft is (raw encoder ticks)."""
        with self._lock:
            motor = self._motor(motor_id)
            motor.advance()
            return motor.raw

    def present(self, motor_id: int) -> int:
        """Present Position as the motor reports it (offset and direction applied)."""
        with self._lock:
            motor = self._motor(motor_id)
            motor.advance()
            return int(motor.present())

    def goal(self, motor_id: int) -> int:
        """The Goal Position register."""
        with self._lock:
            motor = self._motor(motor_id)
            signed = isinstance(motor, _DynamixelMotor)
            return motor.get(motor.GOAL, motor.PRESENT_SIZE, signed=signed)

    def torque(self, motor_id: int) -> bool:
        with self._lock:
            return self._motor(motor_id).torque

    def register(self, motor_id: int, address: int, size: int, signed: bool = False) -> int:
        """Any register's stored value (little-endian), for checking what the driver wrote."""
        with self._lock:
            motor = self._motor(motor_id)
            motor.refresh()
            return motor.get(address, size, signed=signed)

    def homing_offset(self, motor_id: int) -> int:
        """The homing offset as the motor means it (Dynamixel: added; STS: subtracted)."""
        with self._lock:
            motor = self._motor(motor_id)
            if isinstance(motor, _StsMotor):
                return motor.offset()
            return motor.get(_DynamixelMotor.HOMING, 4, signed=True)

    def power_cycle(self) -> None:
        """Switch the motors off and on: RAM back to defaults, EEPROM as last saved."""
        with self._lock:
            for motor in self._motors.values():
                saved = bytes(motor.saved)
                motor.advance()
                raw = motor.raw
                motor.defaults(motor.id)
                motor.table[: len(saved)] = saved
                if isinstance(motor, _StsMotor):
                    motor.table[motor.LOCK] = 1
                motor.table[motor.TORQUE] = 0
                motor.raw = raw
                motor.set_goal_to_present()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Block until `predicate()` (checked after every packet served) holds, or `timeout`
        seconds pass; returns whether it held. For tests: "until the driver has read N more
        times", never "sleep and hope"."""
        deadline = time.monotonic() + timeout
        while not predicate():  # outside the lock: the predicate may talk to the bus
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._changed:
                self._changed.wait(min(left, 0.05))
        return True

    # --- the responder --------------------------------------------------------------------
    def _serve(self) -> None:
        buf = bytearray()
        master = self._master
        assert master is not None
        while True:
            ready, _, _ = select.select([master, self._wake_r], [], [], 0.5)
            if self._wake_r in ready:
                return
            if not ready:
                continue
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            buf += data
            while True:
                packet, used = self._parse(buf)
                if packet is None and used == 0:
                    break
                del buf[:used]
                if packet is None:
                    continue
                with self._changed:
                    reply = self._handle(packet)
                    self._changed.notify_all()
                if reply:
                    try:
                        os.write(master, reply)
                    except OSError:
                        return

    def _status(self, motor: _Motor, error: int, params: bytes = b"") -> bytes:
        if self.protocol == "dynamixel":
            return dynamixel_packet(motor.id, DXL_STATUS, bytes([error]) + params)
        return scs_packet(motor.id, error, params)

    def _handle(self, packet: Packet) -> bytes:
        if not packet.valid:
            self.bad_packets += 1
            if self.protocol == "dynamixel" and packet.id != BROADCAST:
                try:
                    return self._status(self._motor(packet.id), DXL_CRC_ERROR)
                except KeyError:
                    return b""
            return b""  # an STS servo ignores a packet with a bad checksum
        self.instructions[packet.instruction] += 1
        if packet.instruction in (SYNC_READ, SYNC_WRITE):
            return self._sync(packet)
        silent: list[_Motor] = []
        if packet.id == BROADCAST:
            targets = sorted(self._motors.values(), key=lambda m: m.id)
        else:
            targets = [m for m in self._motors.values() if m.id == packet.id]
            if packet.instruction in (WRITE, REG_WRITE, ACTION):
                # Motors with this id as their Secondary ID do what changes state, unheard.
                silent = [m for m in self._motors.values() if m.secondary_id == packet.id]
            if not targets and not silent:
                return b""  # nobody has this id: silence, and the SDK times out
        replies = b""
        for motor in targets:
            reply = self._one(motor, packet)
            if packet.id != BROADCAST or packet.instruction == PING:
                replies += reply
        for motor in silent:
            self._one(motor, packet)
        return replies

    def _address(self, params: bytes) -> tuple[int, bytes]:
        if self.protocol == "dynamixel":
            return params[0] | params[1] << 8, params[2:]
        return params[0], params[1:]

    def _one(self, motor: _Motor, packet: Packet) -> bytes:
        dxl = self.protocol == "dynamixel"
        params = packet.params
        if packet.instruction == PING:
            if dxl:
                return self._status(motor, 0, _le(motor.number, 2) + bytes([motor.table[6]]))
            return self._status(motor, 0)
        if packet.instruction == READ:
            if len(params) != (4 if dxl else 2):
                return self._status(motor, DXL_LENGTH_ERROR if dxl else 0)
            address, rest = self._address(params)
            size = rest[0] | rest[1] << 8 if dxl else rest[0]
            error, data = motor.read(address, size)
            return self._status(motor, error, data)
        if packet.instruction == WRITE:
            if len(params) < (3 if dxl else 2):
                return self._status(motor, DXL_LENGTH_ERROR if dxl else 0)
            address, data = self._address(params)
            return self._status(motor, motor.write(address, data))
        if packet.instruction == REG_WRITE:
            if len(params) < (3 if dxl else 2):
                return self._status(motor, DXL_LENGTH_ERROR if dxl else 0)
            address, data = self._address(params)
            return self._status(motor, motor.register_write(address, data))
        if packet.instruction == ACTION:
            motor.action()
            return b""  # the SDKs send Action without waiting for a status: none comes
        return self._status(motor, DXL_INSTRUCTION_ERROR if dxl else 0)

    def _sync(self, packet: Packet) -> bytes:
        params = packet.params
        if self.protocol == "dynamixel":
            address, size, rest = params[0] | params[1] << 8, params[2] | params[3] << 8, params[4:]
        else:
            address, size, rest = params[0], params[1], params[2:]
        by_id = {m.id: m for m in self._motors.values()}
        if packet.instruction == SYNC_READ:
            replies = b""
            for motor_id in rest:  # each motor answers in the order it was listed
                motor = by_id.get(motor_id)
                if motor is not None:
                    error, data = motor.read(address, size)
                    replies += self._status(motor, error, data)
            return replies
        step = 1 + size
        for i in range(0, len(rest) - step + 1, step):
            for motor in self._motors.values():  # a shadow takes its primary's slot too
                if rest[i] in (motor.id, motor.secondary_id):
                    motor.write(address, rest[i + 1 : i + step])
        return b""


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m robots.emulators.servo_bus",
        description="An emulated servo arm bus on a pseudo-terminal; prints the port to give "
        "the driver (dynamixel:<port> or feetech:<port>) and serves until Ctrl-C.",
    )
    parser.add_argument("--protocol", choices=["dynamixel", "feetech"], required=True)
    parser.add_argument(
        "--model", help="arm model whose motors (shadows included) to emulate (koch, aloha, ...)"
    )
    parser.add_argument(
        "--motors", help="motors instead of --model: id:type,... e.g. 1:xl430-w250,2:xl330-m288"
    )
    parser.add_argument(
        "--sweep",
        type=float,
        nargs="?",
        const=900.0,
        default=0.0,
        help="with the torque off, move every joint back and forth by this many ticks "
        "(default 900), as a person would during calibration or on a leader arm",
    )
    parser.add_argument("--link", help="also make this symlink to the port (a stable name)")
    args = parser.parse_args(argv)
    if args.motors:
        motors = {}
        for item in args.motors.split(","):
            motor_id, _, kind = item.partition(":")
            motors[int(motor_id)] = kind.strip()
    elif args.model:
        from robots.servo import get_model

        model = get_model(args.model, args.protocol)
        motors = {m.id: m.model for m in (*model.motors, *model.shadows)}
    else:
        parser.error("give --model or --motors")
    with ServoBusEmulator(args.protocol, motors, sweep=args.sweep) as bus:
        port = bus.port
        if args.link:
            if os.path.islink(args.link):
                os.unlink(args.link)
            os.symlink(bus.port, args.link)
            port = args.link
        print(port, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            if args.link and os.path.islink(args.link):
                os.unlink(args.link)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
