"""The action convention: one typed spec, its JSON form in stores and checkpoints (older forms
included), and the one check that refuses actions meant for something else."""

from __future__ import annotations

import numpy as np
import pytest

from robots.action import ActionMismatch, ActionSpec, check_actions

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
