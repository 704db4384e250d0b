"""`il record`, `il replay`, `il train` and `il deploy` end to end on emulated hardware, each
device driven through its vendor's library: a Koch arm and its leader on emulated Dynamixel
buses (dynamixel-sdk over pseudo-terminals), and a UR arm (ur-rtde against the loopback
controller emulator) with a RealSense camera playing a recording back through pyrealsense2.
Also what a user sees when an arm's link is lost mid-episode, or when the vendor library
crashes (ur-rtde runs in a process of its own for that): one line, a stopped loop and a store
that keeps every whole episode."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("dynamixel_sdk")
pytest.importorskip("rtde_control")
pytest.importorskip("pyrealsense2")

from hardware_helpers import (
    IL,
    TICKS_PER_DEG,
    ArmPair,
    arm_pair,
    gone,
    il,
    one_line_error,
    vendor_processes,
    wait_for,
)

from il.data.store import DemoStore
from il.rig import make_rig
from il.sources import ReplaySource
from robots.emulators.realsense_recording import write_recording
from robots.emulators.servo_bus import SYNC_WRITE
from robots.emulators.ur_controller import URControllerEmulator
from robots.servo import HALF_TURN


def train_on(store: Path, out: Path, *obs: str) -> None:
    il(
        "train",
        "--policy",
        "bc",
        "--data",
        str(store),
        "--out",
        str(out),
        "train.steps=30",
        "data.only_success=false",
        f"data.obs=[{','.join(obs)}]",
    )


# --------------------------------------------------------------------------- servo arm
@pytest.fixture
def koch(tmp_path: Path) -> Iterator[ArmPair]:
    """A Koch follower and its leader, calibrated; the person swings the leader's elbow."""
    yield from arm_pair(tmp_path, "koch", "koch_leader", "elbow_flex")


def test_servo_arm_records_with_its_leader_replays_and_deploys(koch: ArmPair, tmp_path: Path):
    store = tmp_path / "koch.zarr"
    koch.moving.set()
    proc = il(
        "record",
        "--robot",
        str(koch.robot),
        "--teleop",
        str(koch.teleop),
        "--out",
        str(store),
        "--episodes",
        "2",
        "--max-episode-steps",
        "30",
    )
    koch.moving.clear()
    assert "2 episodes saved" in proc.stdout
    with DemoStore.open(store) as s:
        assert s.num_episodes == 2 and s.schema.action["type"] == "joint_absolute"
        assert s.schema.action["units"][:5] == ["deg"] * 5
        ep = s.read_episode(1)
        elbow = ep["action"][:, 2]
        assert elbow.max() - elbow.min() > 10  # the follower was sent the leader's elbow
        # and the follower's reading trails the command it was sent
        assert np.abs(ep["obs/joint_pos"][1:, 2] - ep["action"][:-1, 2]).max() < 15
        assert np.all(np.diff(ep["time/step"]) > 0)
        last = ep["action"][-1]

    proc = il("replay", str(store), "--episode", "1", "--robot", str(koch.robot))
    assert "30 steps" in proc.stdout
    want = koch.follower.goal(3)  # elbow_flex: the replay's last command holds
    # (calibration put the middle pose at half a turn)
    assert abs(want - (HALF_TURN + last[2] * TICKS_PER_DEG)) < 5 * TICKS_PER_DEG

    run = tmp_path / "run"
    train_on(store, run, "obs/joint_pos")
    deployed = tmp_path / "deploy.zarr"
    proc = subprocess.Popen(
        [
            *IL,
            "deploy",
            "--checkpoint",
            str(run),
            "--robot",
            str(koch.robot),
            "--teleop",
            str(koch.teleop),
            "--record",
            str(deployed),
            "--episodes",
            "1",
            "--max-episode-steps",
            "90",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: (deployed / "zarr.json").exists() or proc.poll() is not None)
        time.sleep(0.5)
        koch.moving.set()  # the operator grabs the leader for a moment, then lets go
        time.sleep(0.7)
        koch.moving.clear()
        _stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    with DemoStore.open(deployed) as s:
        ep = s.read_episode(0)
        assert s.episode_meta()["source"][0] == "intervention"
    marked = ep["intervention"]
    assert 0 < marked.sum() < len(marked)
    assert not marked[0] and not marked[-1]  # the policy before and after the operator


EPISODE = 60
"""Steps per episode when the cable is pulled: two seconds at the arm's 30 Hz."""


@pytest.mark.parametrize("choice", ["keep", "discard"])
def test_unplugged_servo_arm_stops_with_one_line_and_a_whole_store(
    koch: ArmPair, tmp_path: Path, choice: str
):
    store = tmp_path / "koch.zarr"
    koch.moving.set()
    proc = subprocess.Popen(
        [
            *IL,
            "record",
            "--robot",
            str(koch.robot),
            "--teleop",
            str(koch.teleop),
            "--out",
            str(store),
            "--max-episode-steps",
            str(EPISODE),
            "--on-disconnect",
            choice,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Wait for the first saved episode, then pull the cable a few commands into the next:
        # counting the arm's goal writes, not seconds, keeps the pull inside an episode however
        # slowly a loaded machine saves the first one.
        def saved() -> int:
            try:
                with DemoStore.open(store) as s:
                    return s.num_episodes
            except Exception:
                return 0

        wait_for(lambda: saved() >= 1 or proc.poll() is not None)
        commands = koch.follower.instructions[SYNC_WRITE]
        wait_for(
            lambda: (
                koch.follower.instructions[SYNC_WRITE] >= commands + 5 or proc.poll() is not None
            )
        )
        koch.follower.unplug()
        _stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    line = one_line_error(proc, stderr)
    assert "is gone" in line
    with DemoStore.open(store) as s:  # readable, whole
        n = s.num_episodes
        steps = [len(s.read_episode(i)["action"]) for i in range(n)]
        success = list(s.episode_meta()["success"])
    if choice == "keep":
        assert "was kept" in line and n >= 2
        assert steps[:-1] == [EPISODE] * (n - 1) and 0 < steps[-1] < EPISODE
        assert not success[-1]
    else:
        assert "was discarded" in line and steps == [EPISODE] * n


# --------------------------------------------------------------------------- UR + RealSense
FRONT = {"R": [[0, 1, 0], [0, 0, -1], [-1, 0, 0]], "t": [0, 0.3, 1.2]}
"""A camera 1.2 m in front of the base (+x), looking back at it, level."""
SIDE = {"R": [[-1, 0, 0], [0, 0, -1], [0, -1, 0]], "t": [0, 0.3, 1.2]}
"""... and one 1.2 m to the side (+y)."""


@pytest.fixture
def ur(tmp_path: Path) -> Iterator[tuple[URControllerEmulator, Path, str]]:
    """An emulated UR5e, a RealSense recording, and the setup YAML naming both."""
    recording = tmp_path / "d435.db3"
    write_recording(recording, frames=30, width=64, height=48, fps=30)
    camera = f"realsense:{recording}"
    with URControllerEmulator() as controller:
        setup = yaml.safe_load(
            (Path(__file__).resolve().parents[1] / "configs/robots/ur5e.yaml").read_text()
        )
        setup["robot"] = f"ur:{controller.host}"
        # two views of the cell, calibrated (both play the same recording): the session then
        # stores motion tracks of the gripper points the driver places from the tool pose
        setup["cameras"] = [
            {"name": camera, "size": 32, "loop": True, "label": "wrist", "extrinsics": FRONT},
            {"name": camera, "size": 32, "loop": True, "label": "side", "extrinsics": SIDE},
        ]
        path = tmp_path / "ur.yaml"
        path.write_text(yaml.safe_dump(setup))
        yield controller, path, camera


def test_ur_with_realsense_records_from_the_keyboard_replays_and_deploys(ur, tmp_path):
    from test_teleop import start_xvfb, stop_xvfb, xdotool

    controller, setup, _ = ur
    start = controller.state()
    store = tmp_path / "ur.zarr"
    xvfb, display = start_xvfb("+extension", "RECORD")
    proc = subprocess.Popen(
        [
            *IL,
            "record",
            "--robot",
            str(setup),
            "--teleop",
            "keyboard",
            "--out",
            str(store),
            "--episodes",
            "1",
        ],
        env={**os.environ, "DISPLAY": display},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: (store / "zarr.json").exists() or proc.poll() is not None)
        time.sleep(1.5)  # the key listener starts after the store is opened
        xdotool(display, "key", "Return")  # start
        time.sleep(0.3)
        xdotool(display, "keydown", "w")  # +x while held
        time.sleep(0.8)
        xdotool(display, "keyup", "w")
        xdotool(display, "key", "Return")  # stop and save
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        stop_xvfb(xvfb)
    assert proc.returncode == 0, stderr
    with DemoStore.open(store) as s:
        assert s.schema.action["type"] == "ee_delta" and s.schema.fps == 125
        ep = s.read_episode(0)
        moved = ep["obs/ee_pos"][-1, 0] - ep["obs/ee_pos"][0, 0]
        assert moved > 0.02  # the tool went +x while w was held
        images = ep["obs/image/wrist"]
        assert images.shape[1:] == (32, 32, 3) and images.std() > 0
        # every frame was captured before the step that stored it
        assert np.all(ep["time/image/wrist"] <= ep["time/robot"] + 1e-3)
        assert s.schema.source["safety"]["max_speed"] == 0.25
        # motion tracks from the two calibrated views lift back onto the gripper's points
        from envs.camera import triangulate
        from envs.tracks import cameras_from_attrs

        views = cameras_from_attrs(s.schema.source["tracks"])
        lifted = triangulate(views, [ep[f"track/{c.name}"] for c in views])
        assert [c.name for c in views] == ["wrist", "side"]
        assert np.abs(lifted - ep["obs/gripper_points"]).max() < 1e-3
    after_record = controller.state()
    assert after_record["tcp"][0] - start["tcp"][0] > 0.02

    proc = il("replay", str(store), "--episode", "0", "--robot", str(setup))
    assert f"{len(ep['action'])} steps" in proc.stdout
    assert controller.state()["tcp"][0] - after_record["tcp"][0] > 0.02  # moved +x again

    run = tmp_path / "run"
    train_on(store, run, "obs/joint_pos", "obs/image/wrist")
    deployed = tmp_path / "deploy.zarr"
    proc = il(
        "deploy",
        "--checkpoint",
        str(run),
        "--robot",
        str(setup),
        "--record",
        str(deployed),
        "--max-episode-steps",
        "60",
    )
    assert "1 episodes saved" in proc.stdout
    with DemoStore.open(deployed) as s:
        ep = s.read_episode(0)
        assert len(ep["action"]) == 60 and s.episode_meta()["source"][0] == "policy"
        assert np.all(np.abs(ep["action"][:, :3]) <= 0.002 + 1e-9)  # inside the arm's bounds

    # The controller goes away mid-episode: one line, the loop stops, the steps so far kept.
    proc = subprocess.Popen(
        [
            *IL,
            "deploy",
            "--checkpoint",
            str(run),
            "--robot",
            str(setup),
            "--record",
            str(deployed),
            "--max-episode-steps",
            "100000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def commands() -> int:
            # Servo commands: one per control step, of the policy or, while the camera has no
            # fresh frame (a loaded machine), a hold that records no step.
            counts = controller.state()["commands"]
            return counts.get("SERVOL", 0) + counts.get("SERVOJ", 0)

        count = commands()
        wait_for(lambda: commands() > count + 100 or proc.poll() is not None)
        controller.kill()
        _stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    line = one_line_error(proc, stderr)
    assert "was kept" in line, line
    with DemoStore.open(deployed) as s:
        assert s.num_episodes == 2
        kept = s.read_episode(1)
        # Whole steps only (how many depends on how many frames came in time under load).
        assert len(kept["action"]) >= 1 and not s.episode_meta()["success"][1]
        assert {len(v) for v in kept.values()} == {len(kept["action"])}


# --------------------------------------------------------------------------- a crash in ur-rtde
EPISODE_STEPS = 400  # 3.2 s at 125 Hz: long enough to be mid-episode when the fault comes


def ur_setup(host: str, folder: Path) -> Path:
    """configs/robots/ur5e.yaml pointed at the emulated controller at `host`."""
    setup = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "configs/robots/ur5e.yaml").read_text()
    )
    setup["robot"] = f"ur:{host}"
    path = folder / "ur.yaml"
    path.write_text(yaml.safe_dump(setup))
    return path


def servo_commands(controller: URControllerEmulator) -> int:
    """Servo commands the controller ran: one per control step."""
    counts = controller.state()["commands"]
    return counts.get("SERVOL", 0) + counts.get("SERVOJ", 0)


def saved_episodes(store: Path) -> int:
    try:
        with DemoStore.open(store) as s:
            return s.num_episodes
    except Exception:  # not created yet
        return 0


@pytest.fixture(scope="module")
def ur_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BC policy for the UR from its joint positions, trained on two episodes of small
    circles recorded through ur-rtde on the emulator."""
    folder = tmp_path_factory.mktemp("ur-policy")
    t = np.arange(60) / 10
    circle = np.zeros((60, 7))
    circle[:, 0], circle[:, 1], circle[:, 6] = 0.001 * np.cos(t), 0.001 * np.sin(t), -1.0
    with URControllerEmulator() as controller:
        rig = make_rig(str(ur_setup(controller.host, folder)))
        rig.run(ReplaySource([(circle, None), (circle, None)]), out=str(folder / "ur.zarr"))
    train_on(folder / "ur.zarr", folder / "run", "obs/joint_pos")
    return folder / "run"


def deploy_and_fault(
    controller: URControllerEmulator,
    policy: Path,
    folder: Path,
    on_disconnect: str,
    fault: Callable[[list[int]], None],
) -> tuple[str, Path, list[int]]:
    """`il deploy` of `policy` on the emulated UR into a store; once an episode is saved,
    `fault(the vendor processes il started)` some fifty steps into the next one. Returns il's
    one-line error, the store and those processes."""
    store = folder / "deploy.zarr"
    proc = subprocess.Popen(
        [
            *IL,
            "deploy",
            "--checkpoint",
            str(policy),
            "--robot",
            str(ur_setup(controller.host, folder)),
            "--record",
            str(store),
            "--max-episode-steps",
            str(EPISODE_STEPS),
            "--episodes",
            "100",
            "--on-disconnect",
            on_disconnect,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: saved_episodes(store) >= 1 or proc.poll() is not None)
        count = servo_commands(controller)
        wait_for(lambda: servo_commands(controller) > count + 50 or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()[1]
        vendors = vendor_processes(proc.pid)
        fault(vendors)
        _stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return one_line_error(proc, stderr), store, vendors


def test_a_crash_in_ur_rtde_mid_deploy_is_one_line_and_keeps_the_store(ur_policy, tmp_path):
    def segfault(vendors: list[int]) -> None:
        assert len(vendors) == 1, "ur-rtde does not run in a process of its own"
        os.kill(vendors[0], signal.SIGSEGV)

    with URControllerEmulator() as controller:
        line, store, vendors = deploy_and_fault(controller, ur_policy, tmp_path, "keep", segfault)
    assert "SIGSEGV" in line and controller.host in line and "was kept" in line, line
    assert gone(vendors[0])
    with DemoStore.open(store) as s:  # readable, every saved episode whole
        steps = [len(s.read_episode(i)["action"]) for i in range(s.num_episodes)]
        success = list(s.episode_meta()["success"])
    assert len(steps) >= 2 and steps[:-1] == [EPISODE_STEPS] * (len(steps) - 1)
    assert 0 < steps[-1] < EPISODE_STEPS and not success[-1]  # the steps before the crash


def test_a_link_dropped_mid_deploy_with_a_corrupt_package_is_one_line(ur_policy, tmp_path):
    """The controller's link fails and its last RTDE package is garbage, on which ur-rtde
    itself dies of SIGSEGV (tests/test_ur.py): il deploy still ends with one line."""
    with URControllerEmulator() as controller:
        line, store, vendors = deploy_and_fault(
            controller,
            ur_policy,
            tmp_path,
            "discard",
            lambda vendors: controller.drop_connections(corrupt=True),
        )
    assert controller.host in line and "was discarded" in line, line
    assert vendors
    wait_for(lambda: all(gone(pid) for pid in vendors))  # ur-rtde's process is not left behind
    with DemoStore.open(store) as s:
        steps = [len(s.read_episode(i)["action"]) for i in range(s.num_episodes)]
    assert steps and steps == [EPISODE_STEPS] * len(steps)
