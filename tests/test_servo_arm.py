"""Servo arms through the vendors' own SDKs, against byte-exact emulated buses on a pty.

Nothing here mocks the drivers: `dynamixel_sdk` and `scservo_sdk` open the pty, send real
packets and parse real replies; the emulator plays the motors. Waits are bounded polls on the
emulator's packet counters (never sleeps), and nothing asserts on durations.
"""

from __future__ import annotations

import io
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dynamixel_sdk")
pytest.importorskip("scservo_sdk")

from hardware_helpers import (
    ENDS,
    MIDDLE,
    TICKS_PER_DEG,
    TIMEOUT_MS,
    calibrate_arm,
    scripted_ask,
    sweep,
)

from robots.base import ConnectionLost, DriverError, teleop_action
from robots.emulators.servo_bus import (
    Packet,
    ServoBusEmulator,
    dynamixel_packet,
    parse_dynamixel,
    parse_scs,
    scs_packet,
)
from robots.loop import RateLoop
from robots.safety import SafeRobot, SafetyConfig
from robots.servo import (
    HALF_TURN,
    MODELS,
    ArmModel,
    Calibration,
    MotorSpec,
    ServoArm,
    calibrate,
    open_bus,
)
from robots.teleop.leader import LeaderArmTeleop

KOCH = {m.id: m.model for m in MODELS["koch"].motors}
KOCH_LEADER = {m.id: m.model for m in MODELS["koch_leader"].motors}
SO100 = {m.id: m.model for m in MODELS["so100"].motors}


def _single_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text, text
    return text


@pytest.fixture
def koch(tmp_path: Path) -> Iterator[tuple[ServoBusEmulator, Path]]:
    with ServoBusEmulator("dynamixel", KOCH) as emu:
        path = tmp_path / "koch.json"
        calibrate_arm(emu, "koch", path)
        yield emu, path


# ---------------------------------------------------------------------------------- packets
def test_packets_match_the_vendors_examples() -> None:
    # Protocol 2.0 e-manual: ping id 1; read 4 bytes at 132 of id 1; its status (166).
    assert dynamixel_packet(1, 0x01) == bytes.fromhex("FF FF FD 00 01 03 00 01 19 4E")
    read = bytes.fromhex("FF FF FD 00 01 07 00 02 84 00 04 00 1D 15")
    assert dynamixel_packet(1, 0x02, bytes.fromhex("84 00 04 00")) == read
    status = bytes.fromhex("FF FF FD 00 01 08 00 55 00 A6 00 00 00 8C C0")
    assert parse_dynamixel(b"\x00\x13" + status) == (
        Packet(1, 0x55, bytes.fromhex("00 A6 00 00 00")),
        2 + len(status),
    )
    # SCS/STS: ping id 1, checksum ~(1 + 2 + 1).
    assert scs_packet(1, 0x01) == bytes.fromhex("FF FF 01 02 01 FB")
    assert parse_scs(bytes.fromhex("FF FF 01 02 01 FB")) == (Packet(1, 1, b""), 6)
    # Incomplete packets wait for more bytes; a corrupt checksum is flagged.
    assert parse_dynamixel(read[:-1]) == (None, 0)
    assert parse_scs(bytes.fromhex("FF FF 01 02 01 FA"))[0].valid is False


def test_dynamixel_byte_stuffing_round_trips_and_matches_the_sdk() -> None:
    from dynamixel_sdk import PacketHandler

    params = bytes([0x74, 0x00, 0xFF, 0xFF, 0xFD, 0x00])  # goal position 0x00FDFFFF
    packet = dynamixel_packet(1, 0x03, params)
    assert b"\xff\xff\xfd\xfd" in packet  # the stuffed copy
    raw = bytearray(packet[:-2])
    raw[5:7] = (len(params) + 3).to_bytes(2, "little")  # the unstuffed length the SDK starts from
    unstuffed = bytearray(b"\0" * 7) + bytes([0x03]) + params + b"\0\0"
    unstuffed[5:7] = (len(params) + 3).to_bytes(2, "little")
    stuffed = PacketHandler(2.0).addStuffing(list(unstuffed))
    assert bytes(stuffed[5:-2]) == packet[5:-2]
    assert parse_dynamixel(packet)[0] == Packet(1, 0x03, params)


# ---------------------------------------------------------------------------------- buses
@pytest.mark.parametrize(
    ("protocol", "kind", "number"),
    [("dynamixel", "xl430-w250", 1060), ("feetech", "sts3215", 777)],
)
def test_bus_through_the_sdk(protocol: str, kind: str, number: int) -> None:
    with (
        ServoBusEmulator(protocol, {1: kind, 2: kind}, positions={2: 3000}) as emu,
        open_bus(protocol, emu.port, timeout_ms=TIMEOUT_MS) as bus,
    ):
        assert bus.ping(1) == number and bus.ping(2) == number
        assert bus.ping(9) is None  # nobody there: the SDK times out
        assert bus.read(2, "present_position") == 3000
        assert bus.sync_read("present_position", [1, 2]) == {1: 2048, 2: 3000}
        bus.write(1, "homing_offset", -100)  # signed: two's complement / sign-magnitude
        assert bus.read(1, "homing_offset") == -100
        assert emu.homing_offset(1) == -100
        assert bus.read(1, "present_position") == (1948 if protocol == "dynamixel" else 2148)
        bus.write(1, "homing_offset", 0)
        bus.write(2, "acceleration" if protocol == "feetech" else "led", 1)  # one byte
        bus.write(1, "goal_time" if protocol == "feetech" else "goal_pwm", 300)  # two
        bus.sync_write("goal_position", {1: 2200, 2: 2900})
        assert emu.wait_for(lambda: emu.goal(1) == 2200 and emu.goal(2) == 2900)
        assert not emu.torque(1)
        bus.set_torque([1, 2], True)
        assert emu.wait_for(lambda: emu.torque(1) and emu.torque(2))
        assert emu.wait_for(lambda: bus.sync_read("present_position", [1, 2]) == {1: 2200, 2: 2900})
        with pytest.raises(DriverError, match="motor 9") as info:
            bus.read(9, "present_position")
        assert "There is no status packet" in _single_line(info.value)


def test_feetech_offset_is_sign_magnitude_and_lock_guards_the_eeprom() -> None:
    with (
        ServoBusEmulator("feetech", {1: "sts3215"}) as emu,
        open_bus("feetech", emu.port, timeout_ms=TIMEOUT_MS) as bus,
    ):
        bus.write_eeprom(1, {"homing_offset": -100})
        assert emu.register(1, 31, 2) == 0x800 | 100  # bit 11 is the sign
        assert emu.register(1, 55, 1) == 1  # locked again after the write
        bus.write(1, "homing_offset", 55)  # while locked: acts, but is not saved
        assert emu.homing_offset(1) == 55
        emu.power_cycle()
        assert bus.read(1, "homing_offset") == -100


def test_dynamixel_refuses_eeprom_writes_with_torque_on() -> None:
    with (
        ServoBusEmulator("dynamixel", {3: "xm430-w350"}) as emu,
        open_bus("dynamixel", emu.port, timeout_ms=TIMEOUT_MS) as bus,
    ):
        bus.labels = {3: "elbow"}
        bus.set_torque([3], True)
        assert emu.wait_for(lambda: emu.torque(3))
        with pytest.raises(DriverError, match=r"motor 3 \(elbow\)") as info:
            bus.write(3, "homing_offset", 10)
        assert "not available to target address" in _single_line(info.value)
        # Stuffed bytes both ways: FF FF FD inside a value written and read back.
        bus.set_torque([3], False)
        bus.write(3, "operating_mode", 4)  # extended position: no position limit
        bus.write(3, "goal_position", 0x00FDFFFF)
        assert emu.goal(3) == 0x00FDFFFF
        assert bus.read(3, "goal_position") == 0x00FDFFFF


# ---------------------------------------------------------------------------------- calibration
class _Keyboard(io.RawIOBase):
    """Stdin for CliRunner that blocks like a terminal until a test presses Enter."""

    def __init__(self) -> None:
        self._lines: queue.Queue[bytes] = queue.Queue()
        self._waits = 0
        self._waiting = threading.Condition()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        with self._waiting:
            self._waits += 1
            self._waiting.notify_all()
        data = self._lines.get(timeout=30)
        buffer[: len(data)] = data
        return len(data)

    def enter(self) -> None:
        self._lines.put(b"\n")

    def wait_for_prompt(self, n: int) -> None:
        with self._waiting:
            assert self._waiting.wait_for(lambda: self._waits >= n, timeout=60)


def test_il_calibrate_writes_offsets_and_the_arm_loads_them(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from il.cli import app

    out = tmp_path / "cal" / "koch.json"
    with ServoBusEmulator("dynamixel", KOCH) as emu:
        for i, raw in MIDDLE.items():
            emu.set_position(i, raw)
        # The emulator shares the CPU with the test: the setup gives the bus a generous budget.
        setup = tmp_path / "koch.yaml"
        setup.write_text(f"robot: dynamixel:{emu.port}\noptions: {{timeout_ms: {TIMEOUT_MS}}}\n")
        keyboard = _Keyboard()
        errors: list[BaseException] = []

        def person() -> None:
            try:
                keyboard.enter()  # the arm already rests in the middle
                keyboard.wait_for_prompt(2)  # "move every joint through its range"
                sweep(emu, "koch")
                keyboard.enter()
            except BaseException as e:
                errors.append(e)
                keyboard.enter()

        thread = threading.Thread(target=person, daemon=True)
        thread.start()
        result = CliRunner().invoke(
            app,
            ["calibrate", "--robot", str(setup), "--model", "koch", "--out", str(out)],
            input=io.BufferedReader(keyboard),
        )
        thread.join(timeout=10)
        assert not errors, errors
        assert result.exit_code == 0, (result.output, result.exception)

        values = json.loads(out.read_text())
        assert values["model"] == "koch" and values["bus"] == "dynamixel"
        for name, motor in zip(values["motors"], MODELS["koch"].motors, strict=True):
            cal = values["motors"][name]
            assert name == motor.name and cal["id"] == motor.id
            assert cal["homing_offset"] == HALF_TURN - MIDDLE[motor.id]
            assert emu.homing_offset(motor.id) == cal["homing_offset"]  # in the motor
            low, high = ENDS[motor.id]
            assert (cal["range_min"], cal["range_max"]) == (
                low + cal["homing_offset"],
                high + cal["homing_offset"],
            )
            assert emu.present(motor.id) == HALF_TURN  # the middle pose reads mid-scale

        # Someone reuses a motor elsewhere: connecting writes the calibration back.
        with open_bus("dynamixel", emu.port, timeout_ms=TIMEOUT_MS) as bus:
            bus.write(3, "homing_offset", 7)
        arm = ServoArm(emu.port, bus="dynamixel", calibration=str(out), timeout_ms=TIMEOUT_MS)
        with arm:
            assert emu.homing_offset(3) == values["motors"]["elbow_flex"]["homing_offset"]
            np.testing.assert_allclose(arm.observe()["joint_pos"][:5], 0.0, atol=0.1)
            assert all(emu.torque(i) for i in KOCH)
            assert emu.register(6, 11, 1) == 5 and emu.register(1, 11, 1) == 4  # modes
        assert emu.wait_for(lambda: not any(emu.torque(i) for i in KOCH))  # limp again


def test_il_calibrate_usage_errors_are_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from il.cli import UserError, app

    runner = CliRunner()
    for args, message in (
        ([], "--robot (a follower) or --teleop (a leader)"),
        (["--robot", "sim:metaworld/reach-v3"], "give dynamixel:<port> or feetech:<port>"),
        (["--robot", "dynamixel:/nonexistent/tty"], "no serial port /nonexistent/tty"),
        (["--robot", "feetech:/dev/null", "--model", "koch"], "uses dynamixel motors"),
        (["--teleop", str(tmp_path / "none.yaml")], "leader arm's YAML"),
    ):
        result = runner.invoke(app, ["calibrate", *args])
        assert isinstance(result.exception, UserError), (args, result.output)
        assert message in _single_line(result.exception), args


def test_calibration_refuses_a_joint_that_never_moved(tmp_path: Path) -> None:
    with (
        ServoBusEmulator("feetech", SO100) as emu,
        open_bus("feetech", emu.port, timeout_ms=TIMEOUT_MS) as bus,
    ):

        def ask(prompt: str) -> None:
            if "middle" not in prompt:
                sweep(emu, "so100", [1, 2, 3, 4, 5])  # the gripper is forgotten

        with pytest.raises(DriverError, match="gripper did not move") as info:
            calibrate(bus, "so100", ask, say=lambda _: None)
        assert "il calibrate" in _single_line(info.value)


def test_reversed_joint_reads_the_other_way(tmp_path: Path) -> None:
    for protocol, kind in (("dynamixel", "xl430-w250"), ("feetech", "sts3215")):
        model = ArmModel(
            "one",
            protocol,
            (MotorSpec("wrist", 1, kind, reversed=True),),
            leader=True,
            gripper=None,
        )
        with (
            ServoBusEmulator(protocol, {1: kind}) as emu,
            open_bus(protocol, emu.port, timeout_ms=TIMEOUT_MS) as bus,
        ):
            ask = scripted_ask(emu, model)
            cal = calibrate(bus, model, ask, say=lambda _: None)
            assert cal.motors["wrist"].drive_mode == 1
            path = tmp_path / f"{protocol}.json"
            cal.save(path)
            MODELS["one"] = model
            try:
                with ServoArm(
                    emu.port,
                    bus=protocol,
                    model="one",
                    calibration=str(path),
                    timeout_ms=TIMEOUT_MS,
                ) as arm:
                    emu.set_position(1, MIDDLE[1] + 10 * TICKS_PER_DEG)  # shaft forward...
                    # ...the joint backward, whether the motor or the driver reverses it.
                    assert arm.observe()["joint_pos"][0] == pytest.approx(-10, abs=0.1)
            finally:
                del MODELS["one"]


# ---------------------------------------------------------------------------------- the arm
def test_commands_become_goal_ticks(koch: tuple[ServoBusEmulator, Path]) -> None:
    emu, path = koch
    arm = ServoArm(
        emu.port, bus="dynamixel", model="koch", calibration=str(path), timeout_ms=TIMEOUT_MS
    )
    spec = arm.action_spec
    assert spec.kind == "joint_absolute"
    assert spec.units == ("deg",) * 5 + ("%",)
    cal = Calibration.load(path)
    elbow = cal.motors["elbow_flex"]
    assert spec.low[2] == pytest.approx((elbow.range_min - HALF_TURN) / TICKS_PER_DEG)
    assert spec.high[2] == pytest.approx((elbow.range_max - HALF_TURN) / TICKS_PER_DEG)
    assert (spec.low[5], spec.high[5]) == (0.0, 100.0)
    with arm:
        action = np.array([10.0, -20.0, 30.5, -45.0, 90.0, 25.0])
        sent = arm.command(action)
        np.testing.assert_allclose(sent, action)
        grip = cal.motors["gripper"]
        expected = [round(HALF_TURN + a * TICKS_PER_DEG) for a in action[:5]]
        expected.append(round(grip.range_min + 0.25 * (grip.range_max - grip.range_min)))
        assert emu.wait_for(lambda: [emu.goal(i) for i in KOCH] == expected)
        # The arm gets there; observe() reads it back in the same units.
        assert emu.wait_for(lambda: all(abs(emu.present(i) - expected[i - 1]) <= 1 for i in KOCH))
        obs = arm.observe()
        np.testing.assert_allclose(obs["joint_pos"], action, atol=0.2)
        assert isinstance(obs["timestamp"], float)
        np.testing.assert_allclose(arm.hold(), obs["joint_pos"])
        # Beyond the calibrated travel: clipped to it.
        sent = arm.command(np.array([0, 0, 500.0, 0, 0, 150.0]))
        assert sent[2] == spec.high[2] and sent[5] == 100.0
        assert emu.wait_for(lambda: emu.goal(3) == elbow.range_max)
    assert emu.wait_for(lambda: not emu.torque(1))


def test_missing_calibration_says_to_run_il_calibrate(tmp_path: Path) -> None:
    with ServoBusEmulator("dynamixel", KOCH) as emu:
        arm = ServoArm(
            emu.port,
            bus="dynamixel",
            calibration=str(tmp_path / "none.json"),
            timeout_ms=TIMEOUT_MS,
        )
        assert arm.action_spec.dim == 6  # usable before connecting (the safety check)
        with pytest.raises(DriverError, match=r"no calibration at .*none\.json") as info:
            arm.connect()
        assert "il calibrate --robot dynamixel:" in _single_line(info.value)
        assert not arm.is_connected

        path = tmp_path / "so100.json"
        Calibration("so100", "feetech").save(path)
        with pytest.raises(DriverError, match="is for a so100 arm") as info:
            ServoArm(emu.port, bus="dynamixel", calibration=str(path))
        assert "il calibrate" in _single_line(info.value)


def test_a_silent_motor_is_named(tmp_path: Path) -> None:
    motors = dict(KOCH)
    del motors[6]
    with ServoBusEmulator("dynamixel", motors) as emu:
        arm = ServoArm(
            emu.port, bus="dynamixel", calibration=str(tmp_path / "x.json"), timeout_ms=TIMEOUT_MS
        )
        with pytest.raises(DriverError, match=r"gripper \(id 6\)") as info:
            arm.connect()
        _single_line(info.value)
    with pytest.raises(DriverError, match="no serial port /nonexistent/tty"):
        ServoArm("/nonexistent/tty", bus="feetech").connect()


def test_unplugging_mid_run_is_connection_lost(koch: tuple[ServoBusEmulator, Path]) -> None:
    emu, path = koch
    arm = ServoArm(emu.port, bus="dynamixel", calibration=str(path), timeout_ms=TIMEOUT_MS)
    arm.connect()
    arm.command(arm.observe()["joint_pos"])
    emu.unplug()
    with pytest.raises(ConnectionLost, match="is gone") as info:
        for _ in range(3):
            arm.command(arm.observe()["joint_pos"])
    assert "USB cable" in _single_line(info.value)
    arm.disconnect()  # nothing left to talk to: quiet
    assert not arm.is_connected


# ---------------------------------------------------------------------------------- leader
def test_leader_moves_the_follower_through_the_safety_filter(
    koch: tuple[ServoBusEmulator, Path], tmp_path: Path
) -> None:
    follower_emu, follower_cal = koch
    with ServoBusEmulator("dynamixel", KOCH_LEADER) as leader_emu:
        leader_cal = tmp_path / "koch_leader.json"
        calibrate_arm(leader_emu, "koch_leader", leader_cal)
        follower = ServoArm(
            follower_emu.port, bus="dynamixel", calibration=str(follower_cal), timeout_ms=TIMEOUT_MS
        )
        safe = SafeRobot(follower, SafetyConfig.from_dict(follower.safety_defaults()))
        leader = LeaderArmTeleop(
            leader_emu.port, calibration=str(leader_cal), timeout_ms=TIMEOUT_MS
        )
        # The person moves the leader: 30 degrees at the elbow, -20 at the wrist, gripper to
        # 60 % of its travel.
        moves = {3: 30.0, 4: -20.0}
        for i, deg in moves.items():
            leader_emu.set_position(i, MIDDLE[i] + deg * TICKS_PER_DEG)
        grip_low, grip_high = ENDS[6]
        leader_emu.set_position(6, grip_low + 0.6 * (grip_high - grip_low))
        grip = Calibration.load(follower_cal).motors["gripper"]
        want = {i: round(HALF_TURN + moves.get(i, 0.0) * TICKS_PER_DEG) for i in range(1, 6)}
        want[6] = round(grip.range_min + 0.6 * (grip.range_max - grip.range_min))

        def follows() -> bool:
            return all(abs(follower_emu.goal(i) - want[i]) <= 2 for i in want)

        steps = 0
        with safe, leader:
            assert not any(leader_emu.torque(i) for i in KOCH_LEADER)  # free to move by hand
            loop = RateLoop(follower.fps)
            for _ in loop.steps(90):  # 3 s at 30 Hz; the speed limit needs ~6 steps
                reading = leader.read()
                assert reading.robot_action is not None
                safe.observe()
                safe.command(teleop_action(reading, safe.action_spec))
                steps += 1
                if follows():
                    break
            assert follows(), {i: follower_emu.goal(i) for i in want}
            assert steps > 3  # 30 degrees took several steps: the speed limit held it back
            assert safe.rejections.get("velocity", 0) > 0


def test_leader_is_active_while_moved_and_hands_back_at_rest(tmp_path: Path) -> None:
    with ServoBusEmulator("dynamixel", KOCH_LEADER) as leader_emu:
        leader_cal = tmp_path / "koch_leader.json"
        calibrate_arm(leader_emu, "koch_leader", leader_cal)
        leader = LeaderArmTeleop(
            leader_emu.port, calibration=str(leader_cal), timeout_ms=TIMEOUT_MS, active_seconds=0.3
        )
        with leader:
            assert not leader.has_events
            assert not leader.read().active  # resting: a policy keeps control
            leader_emu.set_position(2, MIDDLE[2] + 10 * TICKS_PER_DEG)
            assert leader.read().active  # the operator moved it: takes over
            deadline = time.monotonic() + 5.0
            while leader.read().active and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not leader.read().active  # let go: handed back


def test_configs_build_the_drivers(tmp_path: Path) -> None:
    import yaml

    from robots.registry import load_robot_config, make_robot
    from robots.teleop import make_teleop

    root = Path(__file__).resolve().parents[1]
    for name, bus in (("koch", "dynamixel"), ("so100", "feetech")):
        setup = load_robot_config(str(root / "configs" / "robots" / f"{name}.yaml"))
        robot = make_robot(setup.robot, **setup.options)
        assert isinstance(robot, ServoArm) and robot.model.bus == bus
        assert setup.safety is not None
        SafeRobot(robot, setup.safety)  # checks the limits fit the action spec
        SafeRobot(robot, SafetyConfig.from_dict(robot.safety_defaults()))
    options = yaml.safe_load((root / "configs" / "teleop" / "leader.yaml").read_text())
    teleop = make_teleop("leader", **options)
    assert isinstance(teleop, LeaderArmTeleop) and teleop.events is not None
    with pytest.raises(DriverError, match="events must be"):
        make_teleop("leader", port="/dev/null", events="mouse")


def test_emulator_runs_from_the_command_line() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "robots.emulators.servo_bus",
            "--protocol",
            "feetech",
            "--model",
            "so100",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = proc.stdout.readline().strip()  # type: ignore[union-attr]
        assert port.startswith("/dev/")
        with open_bus("feetech", port, timeout_ms=1000) as bus:
            assert bus.ping(6) == 777
    finally:
        proc.terminate()
        proc.wait(timeout=10)
