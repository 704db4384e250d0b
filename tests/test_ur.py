"""The UR driver through ur_rtde, against the loopback controller emulator.

Nothing of ours is mocked: `URArm` talks to `robots.emulators.ur_controller` through the vendor
library's RTDE, dashboard and script clients, exactly as it would to an arm. Every wait is a
bounded poll with a deadline; no assertion depends on how long something took.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hardware_helpers import gone

from robots.base import ConnectionLost, DriverCrashed, DriverError, vendor_library
from robots.emulators.ur_controller import (
    URControllerEmulator,
    forward_kinematics,
    inverse_kinematics,
)
from robots.loop import RateLoop
from robots.registry import load_robot_config, make_robot
from robots.rotations import matrix_from_rotvec
from robots.safety import BANKED_PERIODS, SafeRobot
from robots.ur import URArm

ROOT = Path(__file__).resolve().parents[1]
needs_ur_rtde = pytest.mark.skipif(
    importlib.util.find_spec("rtde_control") is None, reason="needs ur-rtde (pip install 'il[ur]')"
)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or condition}")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def emulator() -> Iterator[URControllerEmulator]:
    with URControllerEmulator(unlock_delay=0.2) as emu:
        yield emu


@pytest.fixture()
def fresh_emulator() -> Iterator[URControllerEmulator]:
    """An emulator of the test's own, for tests that stop or kill it."""
    with URControllerEmulator(unlock_delay=0.2) as emu:
        yield emu


def connected(host: str, **options) -> URArm:
    arm = URArm(host, **options)
    arm.connect()
    return arm


def test_kinematics_round_trip() -> None:
    q = np.array([0.3, -1.2, 1.4, -1.8, -1.5, 0.4])
    pose = forward_kinematics(q)
    solved, ok = inverse_kinematics(pose, q + 0.05)
    assert ok
    np.testing.assert_allclose(forward_kinematics(solved), pose, atol=1e-6)


def test_import_loads_no_vendor_library_until_connect() -> None:
    code = (
        "import sys, robots.ur, robots.registry\n"
        "arm = robots.registry.make_robot('ur:127.0.0.9')\n"
        "bad = [m for m in ('rtde_control', 'rtde_receive', 'dashboard_client', 'il', 'envs')"
        " if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_missing_library_is_a_one_line_error() -> None:
    with pytest.raises(DriverError) as info:
        vendor_library("rtde_control_not_installed", "ur", "UR arm")
    message = str(info.value)
    assert "\n" not in message and "pip install 'il[ur]'" in message


def test_bad_options_are_one_line_errors() -> None:
    for options in ({"control": "speedJ"}, {"gain": 5.0}, {"lookahead_time": 1.0}):
        with pytest.raises(DriverError) as info:
            make_robot("ur:127.0.0.9", **options)
        assert "\n" not in str(info.value)


@needs_ur_rtde
def test_unreachable_controller_is_a_one_line_error() -> None:
    arm = URArm("127.254.254.254", connect_timeout=1.0)  # nothing listens there
    with pytest.raises(DriverError) as info:
        arm.connect()
    assert "\n" not in str(info.value) and "127.254.254.254" in str(info.value)
    assert not arm.is_connected


def test_config_file_loads_and_fits_the_arm() -> None:
    config = load_robot_config(str(ROOT / "configs/robots/ur5e.yaml"))
    assert config.robot == "ur:192.168.1.10" and config.hz == 125
    assert config.safety is not None and config.safety.max_speed == 0.25
    arm = make_robot(config.robot, **config.options)
    config.safety.check(arm.action_spec)
    assert arm.safety_defaults() is None


@needs_ur_rtde
def test_connect_and_observe(emulator: URControllerEmulator) -> None:
    arm = connected(emulator.host)
    try:
        obs = arm.observe()
        for key, shape in arm.observation_shapes.items():
            assert obs[key].shape == shape, key
        assert abs(obs["timestamp"] - time.time()) < 5.0
        np.testing.assert_allclose(obs["joint_pos"], emulator.state()["q"], atol=1e-6)
        tcp = forward_kinematics(obs["joint_pos"])
        np.testing.assert_allclose(obs["ee_pos"], tcp[:3], atol=1e-6)
        np.testing.assert_allclose(obs["ee_rot"], tcp[3:], atol=1e-6)
        np.testing.assert_allclose(obs["ee_setpoint"], obs["ee_pos"], atol=1e-6)
        assert obs["safety_mode"][0] == 1 and obs["robot_mode"][0] == 7
        assert arm.safety_status == "NORMAL" and arm.robot_status == "RUNNING"
        who = arm.identity()
        assert who["controller_version"].startswith("5.")
        assert who["serial"] and who["model"] == "UR5"
        assert arm.fps == 125.0 and arm.safety_defaults() is None
        np.testing.assert_allclose(arm.hold(), [0, 0, 0, 0, 0, 0, -1.0])  # open until told
    finally:
        arm.disconnect()
        arm.disconnect()  # twice is fine
    wait_for(lambda: not emulator.state()["program_running"], what="script stopped")


@needs_ur_rtde
def test_servoj_reaches_joint_targets(emulator: URControllerEmulator) -> None:
    # Also with ur_rtde's upper register range (24-47), as cells with a fieldbus need.
    arm = connected(emulator.host, control="servoJ", upper_range_registers=True)
    try:
        assert arm.action_spec.kind == "joint_absolute" and arm.action_spec.dim == 7
        start = arm.observe()["joint_pos"]
        target = start + np.array([0.2, -0.1, 0.15, 0.1, -0.2, 0.3])
        loop = RateLoop(arm.fps)
        loop.start()
        for i in range(125):  # ~1 s at 125 Hz, ramping to the target
            s = min(1.0, (i + 1) / 100)
            arm.command(np.concatenate([start + (target - start) * s, [-1.0]]))
            loop.wait()
        wait_for(
            lambda: np.max(np.abs(arm.observe()["joint_pos"] - target)) < 1e-3,
            what="joints at target",
        )
        np.testing.assert_allclose(emulator.state()["q"], target, atol=1e-3)
        np.testing.assert_allclose(arm.hold()[:6], arm.observe()["joint_pos"], atol=1e-6)
        assert emulator.state()["commands"].get("SERVOJ", 0) >= 100
    finally:
        arm.disconnect()


@needs_ur_rtde
def test_servol_deltas_move_the_tcp(emulator: URControllerEmulator) -> None:
    arm = connected(emulator.host)
    try:
        spec = arm.action_spec
        assert spec.kind == "ee_delta" and spec.dim == 7
        start = arm.observe()
        step = np.array([0.002, -0.001, 0.0015])  # within the 0.25 m/s bound at 125 Hz
        loop = RateLoop(arm.fps)
        loop.start()
        for _ in range(50):
            arm.command(np.concatenate([step, [0.0, 0.0, 0.0], [1.0]]))
            loop.wait()
        moved = step * 50
        np.testing.assert_allclose(arm.observe()["ee_setpoint"], start["ee_pos"] + moved, atol=1e-9)
        wait_for(
            lambda: np.linalg.norm(arm.observe()["ee_pos"] - (start["ee_pos"] + moved)) < 1e-3,
            what="TCP at the commanded displacement",
        )
        end = arm.observe()
        np.testing.assert_allclose(end["ee_rot"], start["ee_rot"], atol=1e-3)
        # The gripper dim drives tool digital output 0.
        wait_for(lambda: emulator.state()["tool_digital_out"] & 1 == 1, what="tool output on")
        np.testing.assert_allclose(arm.hold(), [0, 0, 0, 0, 0, 0, 1.0])
        arm.command(np.array([0, 0, 0, 0, 0, 0, -1.0]))
        wait_for(lambda: emulator.state()["tool_digital_out"] & 1 == 0, what="tool output off")
        # A rotation delta turns the tool about the base z axis.
        for _ in range(10):
            arm.command(np.array([0, 0, 0, 0, 0, 0.008, -1.0]))
        wait_for(
            lambda: np.linalg.norm(arm.observe()["ee_rot"] - start["ee_rot"]) > 0.05,
            what="tool rotated",
        )
        # Out-of-bound deltas are clipped to the spec, never sent as asked.
        sent = arm.command(np.array([1.0, 0, 0, 0, 0, 0, -1.0]))
        assert sent[0] == pytest.approx(spec.high[0])
    finally:
        arm.disconnect()


@needs_ur_rtde
def test_through_the_safety_filter(emulator: URControllerEmulator) -> None:
    config = load_robot_config(str(ROOT / "configs/robots/ur5e.yaml"))
    arm = SafeRobot(URArm(emulator.host), config.safety)
    with arm:
        obs = arm.observe()
        sent = arm.command(np.array([0.002, 0, 0, 0, 0, 0, -1.0]))
        assert np.all(np.isfinite(sent)) and obs["ee_pos"].shape == (3,)


@needs_ur_rtde
def test_protective_stop_is_seen_and_cleared(fresh_emulator: URControllerEmulator) -> None:
    arm = connected(fresh_emulator.host)
    try:
        start = arm.observe()["ee_pos"][0]
        arm.command(np.array([0.001, 0, 0, 0, 0, 0, -1.0]))
        # Let the move finish first: on a loaded machine a stop mid-move left part of it to run
        # after the restart, away from the setpoint the restart had taken.
        wait_for(lambda: arm.observe()["ee_pos"][0] - start > 0.00095, what="the move done")
        fresh_emulator.protective_stop()
        wait_for(lambda: arm.observe()["safety_mode"][0] == 3, what="protective stop seen")
        assert arm.safety_status == "PROTECTIVE_STOP"
        with pytest.raises(DriverError) as info:
            arm.command(np.zeros(7))
        message = str(info.value)
        assert "\n" not in message and "protective stop" in message
        assert not isinstance(info.value, ConnectionLost)
        # Clearing goes through the dashboard (the e-Series refuses within its unlock delay,
        # so retry until it is over), and the driver restarts its control script.
        deadline = time.monotonic() + 5.0
        while True:
            try:
                arm.recover()
                break
            except DriverError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert arm.observe()["safety_mode"][0] == 1
        assert fresh_emulator.state()["program_running"]
        before = arm.observe()["ee_pos"]
        np.testing.assert_allclose(arm.observe()["ee_setpoint"], before, atol=1e-6)
        for _ in range(5):
            arm.command(np.array([0.002, 0, 0, 0, 0, 0, -1.0]))
        wait_for(
            lambda: arm.observe()["ee_pos"][0] - before[0] > 0.009, what="moving after recovery"
        )
    finally:
        arm.disconnect()


@needs_ur_rtde
def test_protective_stop_cleared_on_the_pendant(fresh_emulator: URControllerEmulator) -> None:
    """Cleared outside the driver (pendant or another dashboard client): the next command
    brings the control script back by itself."""
    arm = connected(fresh_emulator.host)
    try:
        fresh_emulator.protective_stop()
        wait_for(lambda: arm.observe()["safety_mode"][0] == 3, what="protective stop seen")
        wait_for(
            lambda: fresh_emulator.dashboard("unlock protective stop").startswith("Protective"),
            what="unlock accepted",
        )
        wait_for(lambda: arm.observe()["safety_mode"][0] == 1, what="stop cleared")
        arm.command(np.zeros(7))
        assert fresh_emulator.state()["program_running"]
    finally:
        arm.disconnect()


@needs_ur_rtde
def test_emergency_stop_is_seen_and_recovered(fresh_emulator: URControllerEmulator) -> None:
    arm = connected(fresh_emulator.host, control="servoJ")
    try:
        fresh_emulator.emergency_stop()
        wait_for(lambda: arm.observe()["safety_mode"][0] == 7, what="e-stop seen")
        hold = arm.hold()
        with pytest.raises(DriverError) as info:
            arm.command(hold)
        assert "\n" not in str(info.value) and "emergency stop" in str(info.value)
        with pytest.raises(DriverError) as info:
            arm.recover()  # the button is still pressed
        assert "\n" not in str(info.value)
        fresh_emulator.release()
        wait_for(lambda: arm.observe()["safety_mode"][0] == 1, what="button released")
        with pytest.raises(DriverError) as info:
            arm.command(hold)  # released but still powered off
        assert "POWER_OFF" in str(info.value)
        arm.recover()  # power on, brake release, script
        assert arm.observe()["robot_mode"][0] == 7
        arm.command(hold)
    finally:
        arm.disconnect()


@needs_ur_rtde
def test_connect_refuses_a_stopped_arm(fresh_emulator: URControllerEmulator) -> None:
    fresh_emulator.protective_stop()
    arm = URArm(fresh_emulator.host)
    with pytest.raises(DriverError) as info:
        arm.connect()
    assert "\n" not in str(info.value) and "protective stop" in str(info.value)
    assert not arm.is_connected


@needs_ur_rtde
def test_connection_loss_raises_connection_lost(fresh_emulator: URControllerEmulator) -> None:
    arm = connected(fresh_emulator.host)
    try:
        arm.command(np.array([0.001, 0, 0, 0, 0, 0, -1.0]))
        arm.observe()
        fresh_emulator.kill()
        raised = None
        for _ in range(500):  # bounded: each try returns at once or raises
            try:
                arm.observe()
                arm.command(np.zeros(7))
            except ConnectionLost as e:
                raised = e
                break
            time.sleep(0.01)
        assert raised is not None, "the lost controller went unnoticed"
        assert "\n" not in str(raised) and fresh_emulator.host in str(raised)
        with pytest.raises(ConnectionLost):
            arm.observe()
        with pytest.raises(ConnectionLost):
            arm.command(np.zeros(7))
    finally:
        arm.disconnect()
        arm.disconnect()
    assert not arm.is_connected


def lead(
    times: np.ndarray,
    tcp: np.ndarray,
    target: np.ndarray,
    speed: float,
    apart: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> float:
    """How far the arm got ahead of one moving steadily at `speed`: the most that any two of
    its states lie apart (by `apart`) beyond `speed` x the time between them, less how far the
    arm then trailed the target its controller was driving it to (what it may catch up)."""
    worst = 0.0
    for i in range(len(times) - 1):
        gaps = apart(tcp[i], tcp[i + 1 :])
        behind = apart(tcp[i], target[i : i + 1])[0]
        worst = max(worst, float((gaps - speed * (times[i + 1 :] - times[i]) - behind).max()))
    return worst


def distance(pose: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """How far (m) each of `poses` lies from `pose` (x, y, z, then a rotation vector)."""
    return np.linalg.norm(poses[:, :3] - pose[:3], axis=1)


def turned(pose: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """The angle (rad) each of `poses` is turned from `pose`: from the trace of the relative
    rotation, tr(R_k R^T) = sum(R_k * R)."""
    rotation = matrix_from_rotvec(pose[3:])
    others = np.array([matrix_from_rotvec(r) for r in poses[:, 3:]])
    cos = (np.einsum("kij,ij->k", others, rotation) - 1.0) / 2.0
    return np.arccos(np.clip(cos, -1.0, 1.0))


@needs_ur_rtde
def test_commands_at_1khz_move_the_arm_no_faster_than_its_speed_limits(
    fresh_emulator: URControllerEmulator, tmp_path: Path
) -> None:
    """A 1 kHz burst of servoL commands, each asking for five times a step of translation and
    rotation, through the limits of configs/robots/ur5e.yaml (0.25 m/s, 1 rad/s at 125 Hz):
    the TCP the controller reports, with the controller's own timestamps, never goes faster
    than those speeds. The same burst at 125 Hz still moves the arm a full step per command."""
    config = load_robot_config(str(ROOT / "configs/robots/ur5e.yaml")).safety
    assert config is not None and config.max_speed and config.max_angular_speed
    speed, angular = config.max_speed, config.max_angular_speed
    rtde_receive = vendor_library("rtde_receive", "ur", "UR arm")
    robot = SafeRobot(URArm(fresh_emulator.host), config)
    recipe = ["timestamp", "actual_TCP_pose", "target_q"]
    with robot:
        period = robot.config.period
        # A second RTDE client logs every state the controller sends (ur_rtde's own recorder,
        # on its own thread): its timestamp, the TCP pose and the joint targets it tracks.
        logger = rtde_receive.RTDEReceiveInterface(fresh_emulator.host, 500.0, recipe)

        def burst(hz: float, direction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
            """Commands at `hz` for 0.4 s (at most 0.4 s x hz of them) and the arm's states
            until it stands still: the controller's timestamps, TCP poses and target poses,
            and how many commands were sent."""
            log = tmp_path / f"{hz:g}hz.csv"
            assert logger.startFileRecording(str(log), recipe)
            ask = np.array([0.01, 0.0, 0.0, 0.0, 0.0, 0.04, 0.0]) * direction
            ask[6] = -1.0
            sent, start = 0, time.monotonic()
            for tick in RateLoop(hz).steps(round(0.4 * hz)):
                if tick.mono_time - start >= 0.4:  # a slow machine sends fewer, not for longer
                    break
                robot.command(ask)
                sent += 1
            setpoint = robot.observe()["ee_setpoint"]
            wait_for(
                lambda: np.linalg.norm(robot.observe()["ee_pos"] - setpoint) < 1e-4,
                what="the arm at its setpoint",
            )
            time.sleep(0.05)
            logger.stopFileRecording()
            states = np.loadtxt(log, delimiter=",", skiprows=1)
            target = np.array([forward_kinematics(q) for q in states[:, 7:13]])
            return states[:, 0], states[:, 1:7], target, sent

        try:
            fast = burst(1000.0, +1.0)
            slow = burst(1.0 / period, -1.0)
        finally:
            logger.disconnect()
    # Never faster than the limits: ahead of a steady max speed by no more than the step and a
    # half a start may bank, and 30 ms for commands on their way to the controller. (What the
    # arm trailed its target by is not counted: the emulated controller is an ordinary process,
    # which on a busy machine misses cycles and then catches up; a real one is hard real-time.)
    ahead = BANKED_PERIODS * period + 0.03
    assert distance(fast[1][0], fast[1][-1:])[0] > 0.05  # it moved: 0.1 m at 0.25 m/s
    for times, tcp, target, _ in (fast, slow):
        for name, limit, apart in (("m", speed, distance), ("rad", angular, turned)):
            got = lead(times, tcp, target, limit, apart)
            assert got <= limit * ahead, f"{got:.4f} {name} ahead of {limit} {name}/s"
    # At 125 Hz: a full step per command, 2 mm and 8 mrad (on a busy machine a step that
    # starts over half a period early, after a late one, moves less: hence 90 %).
    _, tcp, _, commands = slow
    moved, full = distance(tcp[0], tcp[-1:])[0], commands * speed * period
    assert moved >= 0.9 * full, f"moved {moved:.4f} m of {full:.4f} m"
    rotated, full = turned(tcp[0], tcp[-1:])[0], commands * angular * period
    assert rotated >= 0.9 * full, f"turned {rotated:.4f} rad of {full:.4f} rad"


@needs_ur_rtde
def test_ur_rtde_runs_in_a_process_of_its_own(emulator: URControllerEmulator) -> None:
    arm = connected(emulator.host)
    pid = arm.vendor_pid
    try:
        assert pid is not None and pid != os.getpid()
        # Ctrl-C in a terminal reaches the whole process group: ur_rtde's process leaves it to
        # the session, which can then still hold and stop the arm.
        os.kill(pid, signal.SIGINT)
        arm.command(np.array([0.001, 0, 0, 0, 0, 0, -1.0]))
        assert arm.observe()["joint_pos"].shape == (6,)
    finally:
        arm.disconnect()
    assert gone(pid) and arm.vendor_pid is None  # it never outlives the connection


@needs_ur_rtde
def test_a_crash_in_ur_rtde_is_a_lost_connection_naming_the_signal(
    fresh_emulator: URControllerEmulator,
) -> None:
    arm = connected(fresh_emulator.host)
    pid = arm.vendor_pid
    try:
        arm.command(np.array([0.001, 0, 0, 0, 0, 0, -1.0]))
        os.kill(pid, signal.SIGSEGV)  # what ur_rtde did on a dropped connection
        with pytest.raises(DriverCrashed) as info:
            arm.observe()
        message = str(info.value)
        assert "\n" not in message and fresh_emulator.host in message and "SIGSEGV" in message
        assert isinstance(info.value, ConnectionLost) and info.value.signal == "SIGSEGV"
        assert not arm.is_connected
        with pytest.raises(DriverCrashed):
            arm.command(np.zeros(7))
    finally:
        arm.disconnect()  # quiet: nothing left to stop
        arm.disconnect()
    assert gone(pid)
    arm.connect()  # reconnecting starts ur_rtde afresh
    try:
        assert arm.vendor_pid != pid
        arm.command(np.array([0.001, 0, 0, 0, 0, 0, -1.0]))
    finally:
        arm.disconnect()


@needs_ur_rtde
def test_a_hung_ur_rtde_is_ended_and_reported(fresh_emulator: URControllerEmulator) -> None:
    arm = connected(fresh_emulator.host, answer_within=0.5)
    pid = arm.vendor_pid
    try:
        os.kill(pid, signal.SIGSTOP)  # alive but answering nothing
        with pytest.raises(DriverCrashed) as info:
            arm.command(np.zeros(7))
        message = str(info.value)
        assert "\n" not in message and "did not answer" in message
        assert fresh_emulator.host in message and gone(pid)
    finally:
        arm.disconnect()


@needs_ur_rtde
def test_a_corrupt_package_as_the_link_drops_crashes_ur_rtde_not_the_session(
    fresh_emulator: URControllerEmulator,
) -> None:
    """ur_rtde 1.6 reads past an RTDE data package cut off after its header and dies of
    SIGSEGV; that ends its own process, and the driver reports the lost link in one line."""
    arm = connected(fresh_emulator.host)
    pid = arm.vendor_pid
    try:
        arm.command(np.array([0.001, 0, 0, 0, 0, 0, -1.0]))
        fresh_emulator.drop_connections(corrupt=True)
        raised = None
        for _ in range(500):  # bounded: each try returns at once or raises
            try:
                arm.observe()
                arm.command(np.zeros(7))
            except ConnectionLost as e:
                raised = e
                break
            time.sleep(0.01)
        assert raised is not None, "the dropped link went unnoticed"
        assert "\n" not in str(raised) and fresh_emulator.host in str(raised)
    finally:
        arm.disconnect()
    assert gone(pid)
