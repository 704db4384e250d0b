"""ALOHA-class arms (ViperX 300 S follower, WidowX 250 leader) through `dynamixel_sdk`
against the emulated bus: the Secondary ID that makes ids 3 and 5 shadows of the shoulder and
elbow, the follower's settings, leader-follower teleop and `il record` end to end.

On the real arm a shadow motor shares its joint's gear with the primary, mirrored: the person
in `hardware_helpers` turns both shafts (`move`), and a shadow that obeys its primary turns
its shaft by as much the other way; a shadow that did not would pull against the primary.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dynamixel_sdk")

from hardware_helpers import (
    GRIPPER_ENDS,
    SHADOW_SUM,
    TICKS_PER_DEG,
    TIMEOUT_MS,
    ArmPair,
    arm_pair,
    calibrate_arm,
    il,
    motors_of,
    move,
    poses,
)

from il.data.store import DemoStore
from robots.base import DriverError, teleop_action
from robots.emulators.servo_bus import WRITE, ServoBusEmulator
from robots.loop import RateLoop
from robots.safety import SafeRobot, SafetyConfig
from robots.servo import HALF_TURN, MODELS, Calibration, ServoArm, open_bus
from robots.servo.dynamixel import DRIVE_REVERSE
from robots.servo.models import (
    ALOHA_GRIPPER_CURRENT_LIMIT,
    DXL_CURRENT_POSITION,
    DXL_EXTENDED_POSITION,
)
from robots.teleop.leader import LeaderArmTeleop

ROOT = Path(__file__).resolve().parents[1]
SHADOWS = {3: 2, 5: 4}  # shadow id -> primary id
# Control-table addresses the tests look at directly on the emulated motors.
DRIVE_MODE, OPERATING_MODE, SECONDARY_ID, CURRENT_LIMIT = 10, 11, 12, 38
PRIMARIES = MODELS["aloha"].ids


def _single_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text, text
    return text


def _follower(emu: ServoBusEmulator, calibration: Path) -> ServoArm:
    return ServoArm(
        emu.port,
        bus="dynamixel",
        model="aloha",
        calibration=str(calibration),
        timeout_ms=TIMEOUT_MS,
    )


def _shaft_ticks(deg: float) -> float:
    return deg * TICKS_PER_DEG


@pytest.fixture
def aloha(tmp_path: Path) -> Iterator[tuple[ServoBusEmulator, Path]]:
    """A calibrated ViperX follower on its bus, shadows included (calibration set them up)."""
    with ServoBusEmulator("dynamixel", motors_of("aloha")) as emu:
        path = tmp_path / "aloha.json"
        calibrate_arm(emu, "aloha", path)
        yield emu, path


# ---------------------------------------------------------------------------------- the bus
def test_secondary_id_makes_a_silent_shadow() -> None:
    from dynamixel_sdk import COMM_RX_TIMEOUT, COMM_SUCCESS, PacketHandler, PortHandler

    with (
        ServoBusEmulator("dynamixel", {2: "xm540-w270", 3: "xm540-w270", 8: "xc430-w150"}) as emu,
        open_bus("dynamixel", emu.port, timeout_ms=TIMEOUT_MS) as bus,
    ):
        assert emu.register(3, SECONDARY_ID, 1) == 255  # factory value: no second id
        assert (bus.ping(2), bus.ping(8)) == (1120, 1070)  # XM540-W270, XC430-W150
        bus.write(3, "secondary_id", 2)
        # Reads and pings of id 2 are answered by motor 2 alone.
        emu.set_position(2, 1500)
        emu.set_position(3, 1000)
        assert bus.read(2, "present_position") == 1500
        assert bus.sync_read("present_position", [2]) == {2: 1500}
        assert bus.ping(2) == 1120
        # Writes to id 2: both motors execute them, only id 2 answers (one reply, no clash).
        bus.write(2, "led", 1)
        assert emu.register(3, 65, 1) == 1
        bus.sync_write("goal_position", {2: 2500})  # no reply: wait for the emulator to serve it
        assert emu.wait_for(lambda: emu.goal(2) == emu.goal(3) == 2500)
        bus.set_torque([2], True)
        assert emu.wait_for(lambda: emu.torque(2) and emu.torque(3))
        bus.set_torque([2], False)

        port, ph = PortHandler(emu.port), PacketHandler(2.0)
        assert port.openPort() and port.setBaudRate(1_000_000)
        try:
            # Registered writes wait for Action, in the shadow as in the primary.
            assert ph.regWriteTxRx(port, 2, 116, 4, list((1800).to_bytes(4, "little")))[0] == (
                COMM_SUCCESS
            )
            assert emu.goal(2) == emu.goal(3) == 2500
            ph.action(port, 2)
            assert emu.wait_for(lambda: emu.goal(2) == emu.goal(3) == 1800)
            # A write to an id only a shadow obeys is executed and never answered.
            ph.write1ByteTxRx(port, 3, 12, 7)
            result, _ = ph.write1ByteTxRx(port, 7, 65, 0)
            assert result == COMM_RX_TIMEOUT
            assert emu.register(3, 65, 1) == 0
        finally:
            port.closePort()


def test_each_motor_type_takes_only_its_own_modes_and_current_limit() -> None:
    with (
        ServoBusEmulator("dynamixel", {1: "xm430-w350", 2: "xc430-w150"}) as emu,
        open_bus("dynamixel", emu.port, timeout_ms=TIMEOUT_MS) as bus,
    ):
        assert emu.register(1, CURRENT_LIMIT, 2) == 1193  # XM430-W350: its factory maximum
        bus.write_eeprom(1, {"operating_mode": DXL_CURRENT_POSITION, "current_limit": 300})
        assert (emu.register(1, OPERATING_MODE, 1), emu.register(1, CURRENT_LIMIT, 2)) == (5, 300)
        with pytest.raises(DriverError, match="out of range"):
            bus.write(1, "current_limit", 1194)
        # An XC430 has no current sensor: no current-based modes, no Current Limit.
        with pytest.raises(DriverError, match=r"motor 2 .*operating_mode=5 refused.*out of range"):
            bus.write(2, "operating_mode", DXL_CURRENT_POSITION)
        with pytest.raises(DriverError, match="current_limit=300 refused"):
            bus.write(2, "current_limit", 300)
        bus.write(2, "operating_mode", DXL_EXTENDED_POSITION)


# ---------------------------------------------------------------------------------- follower
def test_aloha_models_pair_joint_for_joint() -> None:
    follower, leader = MODELS["aloha"], MODELS["aloha_leader"]
    assert follower.names == leader.names  # the leader's reading is the follower's action
    assert follower.names[-1] == follower.gripper == "gripper"
    assert follower.ids == leader.ids == (1, 2, 4, 6, 7, 8, 9)
    assert [(s.id, s.primary) for s in follower.shadows] == list(SHADOWS.items())
    assert [(s.id, s.primary) for s in leader.shadows] == list(SHADOWS.items())
    assert leader.leader and not follower.leader


def test_connect_sets_up_shadows_and_the_gripper(aloha: tuple[ServoBusEmulator, Path]) -> None:
    emu, path = aloha
    cal = Calibration.load(path)
    assert list(cal.motors) == list(MODELS["aloha"].names)  # the shadows are no joints
    middle, _ = poses("aloha")
    for name, motor in cal.motors.items():
        assert motor.homing_offset == HALF_TURN - middle[motor.id], name
    # Shadows as they come from the factory: no Secondary ID, same direction, no offset.
    with open_bus("dynamixel", emu.port, timeout_ms=TIMEOUT_MS) as bus:
        for shadow in SHADOWS:
            factory = {"secondary_id": 255, "operating_mode": 3, "drive_mode": 0}
            bus.write_eeprom(shadow, {**factory, "homing_offset": 0})
    assert emu.register(3, SECONDARY_ID, 1) == emu.register(5, SECONDARY_ID, 1) == 255
    start = {i: emu.position(i) for i in (2, 3, 4, 5)}
    arm = _follower(emu, path)
    with arm:
        for shadow, primary in SHADOWS.items():
            assert emu.register(shadow, SECONDARY_ID, 1) == primary
            drive = emu.register(primary, DRIVE_MODE, 1) ^ emu.register(shadow, DRIVE_MODE, 1)
            assert drive & DRIVE_REVERSE  # mounted mirrored: turns the other way
            assert emu.register(shadow, OPERATING_MODE, 1) == DXL_EXTENDED_POSITION
            assert abs(emu.present(shadow) - emu.present(primary)) <= 1  # reads as its primary
            # switched on through the primary's id alone (a sync write: no reply to wait on)
            assert emu.wait_for(lambda s=shadow: emu.torque(s))
        for motor_id in PRIMARIES[:-1]:
            assert emu.register(motor_id, OPERATING_MODE, 1) == DXL_EXTENDED_POSITION
        assert emu.register(9, OPERATING_MODE, 1) == DXL_CURRENT_POSITION
        assert emu.register(9, CURRENT_LIMIT, 2) == ALOHA_GRIPPER_CURRENT_LIMIT

        # Only the primaries are commanded; the shadows take the same goals and turn their
        # shafts by as much the other way: with the primary, not against it.
        action = np.array([0.0, 20.0, -15.0, 0.0, 0.0, 0.0, 50.0])
        assert set(arm.arm.goal_ticks(action)) == set(PRIMARIES)
        arm.command(action)
        for shadow, primary in SHADOWS.items():
            assert emu.wait_for(lambda s=shadow, p=primary: emu.goal(s) == emu.goal(p))
        turned = {2: 20.0, 4: -15.0}  # degrees, by primary id
        for shadow, primary in SHADOWS.items():
            want = start[primary] + _shaft_ticks(turned[primary])
            assert emu.wait_for(lambda p=primary, w=want: abs(emu.position(p) - w) <= 2)
            mirrored = start[shadow] - (emu.position(primary) - start[primary])
            assert emu.wait_for(lambda s=shadow, m=mirrored: abs(emu.position(s) - m) <= 2)
        np.testing.assert_allclose(arm.observe()["joint_pos"][1:3], [20.0, -15.0], atol=0.2)
    assert emu.wait_for(lambda: not any(emu.torque(i) for i in (*PRIMARIES, 3, 5)))


def test_reconnect_repairs_shadows_and_leaves_a_set_up_arm_alone(
    aloha: tuple[ServoBusEmulator, Path],
) -> None:
    emu, path = aloha
    with _follower(emu, path):
        pass
    writes = emu.instructions[WRITE]
    with _follower(emu, path):
        pass
    assert emu.instructions[WRITE] == writes  # nothing to fix: no EEPROM write
    # Someone flips the shoulder's direction: the write reaches its shadow too, which now
    # turns the same way as the primary and would fight it.
    with open_bus("dynamixel", emu.port, timeout_ms=TIMEOUT_MS) as bus:
        bus.write(2, "drive_mode", DRIVE_REVERSE)
    assert emu.register(2, DRIVE_MODE, 1) == emu.register(3, DRIVE_MODE, 1) == DRIVE_REVERSE
    with _follower(emu, path):
        assert emu.register(2, DRIVE_MODE, 1) & DRIVE_REVERSE == 0  # the calibration's
        assert emu.register(3, DRIVE_MODE, 1) & DRIVE_REVERSE  # mirrored again
        assert abs(emu.present(3) - emu.present(2)) <= 1


def test_a_silent_shadow_is_named(tmp_path: Path) -> None:
    motors = motors_of("aloha")
    del motors[5]
    with ServoBusEmulator("dynamixel", motors) as emu:
        arm = ServoArm(
            emu.port,
            bus="dynamixel",
            model="aloha",
            calibration=str(tmp_path / "none.json"),
            timeout_ms=TIMEOUT_MS,
        )
        with pytest.raises(
            DriverError, match=r"elbow_shadow \(id 5, the second motor of id 4\)"
        ) as info:
            arm.connect()
        assert "not answer" in _single_line(info.value)
        assert not arm.is_connected


# ---------------------------------------------------------------------------------- leader
def test_leader_drives_the_follower_joint_for_joint(
    aloha: tuple[ServoBusEmulator, Path], tmp_path: Path
) -> None:
    follower_emu, follower_cal = aloha
    with ServoBusEmulator("dynamixel", motors_of("aloha_leader")) as leader_emu:
        leader_cal = tmp_path / "aloha_leader.json"
        calibrate_arm(leader_emu, "aloha_leader", leader_cal)
        follower = _follower(follower_emu, follower_cal)
        safe = SafeRobot(follower, SafetyConfig.from_dict(follower.safety_defaults()))
        leader = LeaderArmTeleop(
            leader_emu.port,
            model="aloha_leader",
            calibration=str(leader_cal),
            timeout_ms=TIMEOUT_MS,
        )
        # The person moves the leader: shoulder +20 degrees, elbow -30, wrist_rotate +40,
        # gripper to 60 % of its travel.
        middle, _ = poses("aloha_leader")
        moves = {2: 20.0, 4: -30.0, 8: 40.0}
        move(leader_emu, "aloha_leader", {i: middle[i] + _shaft_ticks(d) for i, d in moves.items()})
        low, high = GRIPPER_ENDS
        move(leader_emu, "aloha_leader", {9: low + 0.6 * (high - low)})
        grip = Calibration.load(follower_cal).motors["gripper"]
        want = {i: round(HALF_TURN + _shaft_ticks(moves.get(i, 0.0))) for i in PRIMARIES[:-1]}
        want[9] = round(grip.range_min + 0.6 * (grip.range_max - grip.range_min))

        def follows() -> bool:
            return all(abs(follower_emu.goal(i) - want[i]) <= 2 for i in want)

        with safe, leader:
            leader_ids = (*MODELS["aloha_leader"].ids, 3, 5)
            assert not any(leader_emu.torque(i) for i in leader_ids)  # free to move by hand
            assert leader_emu.register(9, OPERATING_MODE, 1) == 3  # its XC430 left as it was
            assert leader_emu.register(3, SECONDARY_ID, 1) == 2
            for _ in RateLoop(follower.fps).steps(90):  # 3 s at 30 Hz; needs ~8 steps
                reading = leader.read()
                np.testing.assert_allclose(reading.robot_action[[1, 2, 5]], [20, -30, 40], atol=0.2)
                safe.observe()
                safe.command(teleop_action(reading, safe.action_spec))
                if follows():
                    break
            assert follows(), {i: follower_emu.goal(i) for i in want}
            for shadow, primary in SHADOWS.items():
                assert follower_emu.goal(shadow) == follower_emu.goal(primary)


# ---------------------------------------------------------------------------------- il record
@pytest.fixture
def pair(tmp_path: Path) -> Iterator[ArmPair]:
    """An ALOHA follower and leader, calibrated; the person swings the leader's shoulder."""
    yield from arm_pair(tmp_path, "aloha", "aloha_leader", "shoulder")


def test_il_record_with_the_aloha_leader(pair: ArmPair, tmp_path: Path) -> None:
    store = tmp_path / "aloha.zarr"
    pair.moving.set()
    proc = il(
        "record",
        "--robot",
        str(pair.robot),
        "--teleop",
        str(pair.teleop),
        "--out",
        str(store),
        "--episodes",
        "1",
        "--max-episode-steps",
        "30",
    )
    pair.moving.clear()
    assert "1 episodes saved" in proc.stdout
    with DemoStore.open(store) as s:
        action = s.schema.action
        assert action["type"] == "joint_absolute"
        assert action["names"] == list(MODELS["aloha"].names)
        assert action["units"] == ["deg"] * 6 + ["%"]
        ep = s.read_episode(0)
    shoulder = ep["action"][:, 1]
    assert shoulder.max() - shoulder.min() > 10  # the follower was sent the leader's shoulder
    assert np.abs(np.delete(ep["action"][:, :6], 1, axis=1)).max() < 0.5  # nothing else moved
    # the gripper in percent: the leader's rests 30 % into its travel (2300 of 2000..3000)
    np.testing.assert_allclose(ep["action"][:, 6], 30.0, atol=0.5)
    # the follower's reading trails the command it was sent
    assert np.abs(ep["obs/joint_pos"][1:, 1] - ep["action"][:-1, 1]).max() < 15
    # and its shadow went along: same goal, its shaft mirrored
    assert pair.follower.goal(3) == pair.follower.goal(2)
    assert abs(pair.follower.position(3) + pair.follower.position(2) - SHADOW_SUM) < 30


def test_configs_build_the_aloha_drivers() -> None:
    import yaml

    from robots.registry import load_robot_config, make_robot
    from robots.teleop import make_teleop

    setup = load_robot_config(str(ROOT / "configs" / "robots" / "aloha.yaml"))
    robot = make_robot(setup.robot, **setup.options)
    assert isinstance(robot, ServoArm) and robot.model.name == "aloha"
    assert setup.safety is not None
    SafeRobot(robot, setup.safety)  # the limits fit the 7-joint action spec
    options = yaml.safe_load((ROOT / "configs" / "teleop" / "aloha_leader.yaml").read_text())
    teleop = make_teleop(options.pop("device"), **options)
    assert isinstance(teleop, LeaderArmTeleop) and teleop.arm.model.name == "aloha_leader"
