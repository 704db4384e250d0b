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

from robots.base import ConnectionLost, DriverCrashed, DriverError, vendor_library
from robots.emulators.ur_controller import (
    URControllerEmulator,
    forward_kinematics,
    inverse_kinematics,
)
from robots.loop import RateLoop
from robots.registry import load_robot_config, make_robot
from robots.safety import SafeRobot
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


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


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
