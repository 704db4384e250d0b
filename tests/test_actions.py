"""The action convention: one typed spec, its JSON form in stores and checkpoints (older forms
included), and the one check that refuses actions meant for something else — wherever a
checkpoint or a recording meets an env or a robot, before anything moves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import config_for

import envs
from il.policies.registry import preset
from il.record import record_expert
from il.train import load_config, train
from robots.action import ActionMismatch, ActionSpec, check_actions
from robots.emulators.servo_bus import ServoBusEmulator
from robots.servo import get_model

IL = [sys.executable, "-m", "il.cli"]

EE = ActionSpec(
    "ee_delta",
    ("x", "y", "z", "gripper"),
    ("cm", "cm", "cm", "1"),
    -np.ones(4),
    np.ones(4),
    frame="world",
    gripper="+1 closes, -1 opens",
)
JOINTS = ActionSpec(
    "joint_absolute",
    ("base", "shoulder", "elbow", "wrist1"),
    ("rad",) * 4,
    -np.pi * np.ones(4),
    np.pi * np.ones(4),
    frame="joint",
)
MOVES = ActionSpec("discrete", ("up", "right", "down", "left"), frame="grid")


@pytest.mark.parametrize("spec", [EE, JOINTS, MOVES])
def test_json_round_trip(spec: ActionSpec) -> None:
    again = ActionSpec.from_json(spec.to_json())
    assert again is not None and again.mismatch(spec) is None
    assert again.to_json() == spec.to_json()


def test_older_store_forms_read_as_the_same_convention() -> None:
    metaworld_before = {
        "type": "delta",
        "frame": "world",
        "dims": ["dx", "dy", "dz", "grab"],
        "units": "dx, dy, dz in [-1, 1]: hand displacement of 1 cm per unit per step",
        "gripper": "grab effort in [-1, 1]; +1 closes, -1 opens",
    }
    read = ActionSpec.from_json(metaworld_before)
    assert read is not None and read.mismatch(EE) is None and read.dim == 4
    maze_before = {"type": "discrete", "n": 4, "names": ["up", "right", "down", "left"]}
    assert ActionSpec.from_json(maze_before).mismatch(MOVES) is None  # type: ignore[union-attr]
    assert ActionSpec.from_json({}) is None


def test_discrete_is_one_index() -> None:
    assert MOVES.dim == 1 and MOVES.discrete and "up, right" in MOVES.describe()
    with pytest.raises(ValueError, match="discrete"):
        ActionSpec("discrete", ("only",))


@pytest.mark.parametrize(
    ("produced", "accepted", "differ"),
    [
        (EE, JOINTS, "kind"),
        (MOVES, EE, "kind"),
        (EE, ActionSpec("ee_delta", ("x", "y", "z", "gripper"), ("m",) * 3 + ("1",)), "units"),
        (JOINTS, ActionSpec("joint_absolute", ("a", "b", "c", "d"), ("rad",) * 4), "names"),
        (EE, ActionSpec("ee_delta", ("x", "y", "z", "rx", "gripper")), "number of dimensions"),
    ],
)
def test_a_mismatch_is_one_line_naming_both(
    produced: ActionSpec, accepted: ActionSpec, differ: str
) -> None:
    with pytest.raises(ActionMismatch) as info:
        check_actions(produced, accepted.to_json(), "checkpoint runs/x", "robot y")
    message = str(info.value)
    assert "\n" not in message and differ in message
    assert produced.describe() in message and accepted.describe() in message


def test_what_is_not_stated_is_not_compared() -> None:
    unstated = ActionSpec("ee_delta", ("x", "y", "z", "gripper"), frame="")
    check_actions(unstated, EE, "a recording", "the arm")  # no units, frame, gripper: no clash
    check_actions(None, EE, "an old checkpoint", "the arm", produced_dim=4)
    with pytest.raises(ActionMismatch, match="4"):
        check_actions(None, EE, "an old checkpoint", "the arm", produced_dim=7)


# --- where a checkpoint or a recording meets an env or a robot ----------------------------------
@pytest.fixture(scope="module")
def metaworld_checkpoint(store_path, tmp_path_factory) -> Path:
    """BC on Meta-World: end-effector deltas."""
    out = tmp_path_factory.mktemp("ee") / "bc"
    train(config_for(store_path, out, "train.steps=2", "train.save_every=2"))
    return out


@pytest.fixture(scope="module")
def maze_run(tmp_path_factory) -> tuple[Path, Path]:
    """A maze store and a procedure-cloning checkpoint on it: discrete moves."""
    root = tmp_path_factory.mktemp("maze")
    store = root / "maze.zarr"
    record_expert(envs.suite("maze/tunnel16/1"), str(store), episodes_per_task=1)
    out = root / "pc"
    overrides = [f"data.path={store}", f"out={out}", "train.steps=2", "train.batch_size=4"]
    small = ["train.val_fraction=0", "model.width=4"]
    config = load_config("pc-maze", preset("pc-maze"), [*overrides, *small])
    train(config)
    return store, out


def il_fails(*args: str) -> str:
    """Run `il`; it must stop with one line, exit status 2. Returns that line."""
    proc = subprocess.run([*IL, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    return lines[0]


def test_an_end_effector_checkpoint_never_reaches_a_joint_position_arm(metaworld_checkpoint):
    koch = get_model("koch")
    motors = {m.id: m.model for m in (*koch.motors, *koch.shadows)}
    with ServoBusEmulator("dynamixel", motors) as bus:
        line = il_fails(
            "deploy", "--checkpoint", str(metaworld_checkpoint), "--robot", f"dynamixel:{bus.port}"
        )
        assert "ee_delta" in line and "joint_absolute" in line and "different kind" in line
        assert "x [cm]" in line and "shoulder_pan [deg]" in line  # printed as text, not markup
        assert sum(bus.instructions.values()) == 0  # not one packet reached the bus
        assert not any(bus.torque(i) for i in motors)


def test_a_discrete_checkpoint_is_refused_by_a_continuous_env(maze_run):
    _, checkpoint = maze_run
    line = il_fails("eval", "--checkpoint", str(checkpoint), "--env", "metaworld/MT10")
    assert "discrete (up, right, down, left)" in line and "ee_delta" in line


def test_a_recording_is_replayed_only_on_a_robot_of_its_convention(maze_run):
    store, _ = maze_run
    line = il_fails("replay", str(store), "--robot", "sim:metaworld/reach-v3")
    assert "the recording" in line and "discrete" in line and "ee_delta" in line


def test_a_checkpoint_of_the_same_convention_passes(metaworld_checkpoint):
    from il.rig import make_rig

    rig = make_rig("sim:metaworld/reach-v3")  # takes Meta-World's actions, as the env does
    policy = rig.load_policy(metaworld_checkpoint)
    assert policy.spec.action_spec.mismatch(rig.robot.action_spec) is None
