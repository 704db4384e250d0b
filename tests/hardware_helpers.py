"""What the tests on emulated hardware share: running `il` as a user does, and servo arms on
emulated buses played by a scripted person (the poses they hold, their calibration, a leader
and follower pair with the setup YAMLs `il` takes).

The emulator's shafts are independent; the person here also plays the arm's mechanics: moving
a joint that has a shadow motor (a second motor geared to it, mounted mirrored) turns the
shadow's shaft the other way, as the shared gear does on the real arm.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path

import yaml

from robots.emulators.servo_bus import SYNC_READ, ServoBusEmulator
from robots.servo import ArmModel, Calibration, calibrate, get_model, open_bus

IL = [sys.executable, "-m", "il.cli"]
TIMEOUT_MS = 300  # generous reply budget: the emulator shares the test's CPU
TICKS_PER_DEG = 4096 / 360

# Shaft positions (raw ticks) a person holds each joint at, and the ends each joint reaches:
# by the joint's place in the arm, the gripper apart.
JOINT_MIDDLE = (2100, 1900, 2500, 1500, 2048, 1800)
JOINT_ENDS = ((1100, 3100), (1000, 3000), (1600, 3400), (700, 2400), (300, 3800), (900, 2900))
GRIPPER_MIDDLE, GRIPPER_ENDS = 2300, (2000, 3000)
# A shadow's shaft plus its primary's: constant, since the shared gear turns them opposite ways
# (2048 each when the emulator starts them both at mid-turn).
SHADOW_SUM = 4096


# ---------------------------------------------------------------------------------- the CLI
def il(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*IL, *args], capture_output=True, text=True, timeout=300)
    if ok and proc.returncode != 0:
        raise AssertionError(f"il {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def one_line_error(proc: subprocess.CompletedProcess | subprocess.Popen, stderr: str) -> str:
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def vendor_processes(pid: int) -> list[int]:
    """The processes that process `pid` runs vendor libraries in (`robots.vendor_process`)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # it ended meanwhile
        if parent == pid and b"robots.vendor_process" in argv:
            found.append(int(entry.name))
    return found


def gone(pid: int) -> bool:
    """Whether no process `pid` exists any more (ended and reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# ---------------------------------------------------------------------------------- servo arms
def motors_of(model: str | ArmModel) -> dict[int, str]:
    """Every motor on the arm's bus, shadows included: what to emulate."""
    arm = get_model(model)
    return {m.id: m.model for m in (*arm.motors, *arm.shadows)}


def poses(model: str | ArmModel) -> tuple[dict[int, int], dict[int, tuple[int, int]]]:
    """The middle pose and each joint's ends, by motor id, for any arm model."""
    arm = get_model(model)
    middle, ends = {}, {}
    joints = [m for m in arm.motors if m.name != arm.gripper]
    for place, motor in enumerate(joints):
        middle[motor.id], ends[motor.id] = JOINT_MIDDLE[place], JOINT_ENDS[place]
    for motor in arm.motors:
        if motor.name == arm.gripper:
            middle[motor.id], ends[motor.id] = GRIPPER_MIDDLE, GRIPPER_ENDS
    return middle, ends


MIDDLE, ENDS = poses("koch")  # ids 1-6


def move(emu: ServoBusEmulator, model: str | ArmModel, positions: Mapping[int, float]) -> None:
    """Move joints by hand to raw shaft positions; a joint's shadow turns with it, mirrored."""
    arm = get_model(model)
    for motor_id, ticks in positions.items():
        emu.set_position(motor_id, ticks)
        for shadow in arm.shadows:
            if shadow.primary == motor_id:
                emu.set_position(shadow.id, SHADOW_SUM - ticks)


def served(emu: ServoBusEmulator, n: int = 1) -> None:
    """Wait until the driver has sync-read `n` more times (it sees what was just set)."""
    start = emu.instructions[SYNC_READ]
    assert emu.wait_for(lambda: emu.instructions[SYNC_READ] >= start + n, 10.0)


def sweep(emu: ServoBusEmulator, model: str | ArmModel, ids: list[int] | None = None) -> None:
    """A person moving every joint (or those of `ids`) to both ends while the calibration
    samples, then back to the middle."""
    middle, ends = poses(model)
    ids = list(get_model(model).ids) if ids is None else ids
    for end in (0, 1):
        move(emu, model, {i: ends[i][end] for i in ids})
        served(emu, 2)
    move(emu, model, {i: middle[i] for i in ids})
    served(emu)


def scripted_ask(
    emu: ServoBusEmulator, model: str | ArmModel, ids: list[int] | None = None
) -> Callable[[str], None]:
    """`calibrate`'s prompt answered by a person who does what it asks before pressing Enter."""
    middle, _ = poses(model)
    ids = list(get_model(model).ids) if ids is None else ids

    def ask(prompt: str) -> None:
        if "middle" in prompt:
            move(emu, model, {i: middle[i] for i in ids})
        else:
            sweep(emu, model, ids)

    return ask


def calibrate_arm(emu: ServoBusEmulator, model: str | ArmModel, path: Path) -> Calibration:
    """Calibrate an arm on its emulated bus the way `il calibrate` does, and save it."""
    arm = get_model(model)
    with open_bus(arm.bus, emu.port, timeout_ms=TIMEOUT_MS) as motors:
        cal = calibrate(motors, arm, scripted_ask(emu, arm), say=lambda _: None)
    cal.save(path)
    return cal


class ArmPair:
    """A follower and its leader on emulated buses, calibrated, with the setup YAMLs `il`
    takes (`robot`, `teleop`); a person who swings the leader's `joint` ±25 degrees while
    `moving` is set. A context manager: the buses live while it is open."""

    def __init__(self, tmp: Path, follower: str, leader: str, joint: str) -> None:
        self.tmp = tmp
        self.follower_model = get_model(follower)
        self.leader_model = get_model(leader)
        self.joint = joint
        self.moving = threading.Event()
        self._stop = threading.Event()
        self._stack = ExitStack()

    def __enter__(self) -> ArmPair:
        follower, leader, tmp = self.follower_model, self.leader_model, self.tmp
        with ExitStack() as stack:
            self.follower = stack.enter_context(ServoBusEmulator(follower.bus, motors_of(follower)))
            self.leader = stack.enter_context(ServoBusEmulator(leader.bus, motors_of(leader)))
            follower_cal, leader_cal = tmp / f"{follower.name}.json", tmp / f"{leader.name}.json"
            calibrate_arm(self.follower, follower, follower_cal)
            calibrate_arm(self.leader, leader, leader_cal)
            self._stack = stack.pop_all()
        self.robot = tmp / f"{follower.name}.yaml"
        self.robot.write_text(
            yaml.safe_dump(
                {
                    "robot": f"{follower.bus}:{self.follower.port}",
                    "hz": 30,
                    "options": {
                        "model": follower.name,
                        "calibration": str(follower_cal),
                        "timeout_ms": TIMEOUT_MS,
                    },
                }
            )
        )
        self.teleop = tmp / f"{leader.name}.yaml"
        self.teleop.write_text(
            yaml.safe_dump(
                {
                    "device": "leader",
                    "port": self.leader.port,
                    "bus": leader.bus,
                    "model": leader.name,
                    "calibration": str(leader_cal),
                    "timeout_ms": TIMEOUT_MS,
                }
            )
        )
        self._thread = threading.Thread(target=self._person, daemon=True)
        self._thread.start()
        return self

    def _person(self) -> None:
        motor_id = next(m.id for m in self.leader_model.motors if m.name == self.joint)
        middle = poses(self.leader_model)[0][motor_id]
        t = 0.0
        while not self._stop.wait(0.02):
            if self.moving.is_set():
                t += 0.02
                ticks = middle + 25 * TICKS_PER_DEG * math.sin(3 * t)
                move(self.leader, self.leader_model, {motor_id: ticks})

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._stack.close()


def arm_pair(tmp: Path, follower: str, leader: str, joint: str) -> Iterator[ArmPair]:
    """An `ArmPair` for a fixture to yield."""
    with ArmPair(tmp, follower, leader, joint) as pair:
        yield pair
