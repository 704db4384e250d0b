"""The servo arms this stack knows, as data: each arm type's motors in action order (name, id,
motor type, the operating mode and current limit a follower needs), the shadow motors that
double a joint, and whether a person moves it (a leader); and the record one motor's
calibration leaves (`MotorCalibration`), which the bus applies and the calibration file holds.

The tables sit below everything else in `robots.servo`, with no bus behind them, so that every
part reads the same facts: the bus checks the motors it finds against them, calibration
measures the joints they name, the arm converts ticks with the motors' resolution, the emulator
(`robots.emulators.servo_bus`) builds its chain of motors from them and `il calibrate` takes
each bus's default arm from them. A new arm type is a new entry in `MODELS`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from robots.base import DriverError

__all__ = [
    "ALOHA_GRIPPER_CURRENT_LIMIT",
    "DEFAULT_LEADER",
    "DEFAULT_MODEL",
    "DXL_CURRENT_POSITION",
    "DXL_EXTENDED_POSITION",
    "HALF_TURN",
    "JOINTS",
    "MODELS",
    "RESOLUTION",
    "ArmModel",
    "MotorCalibration",
    "MotorSpec",
    "ShadowSpec",
    "get_model",
]

RESOLUTION = 4096  # ticks per turn of every motor these arms use
HALF_TURN = RESOLUTION // 2  # the reading the calibrated middle pose is given


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
