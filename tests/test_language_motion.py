"""Language motions: properties of the labeler, fixed examples and a real expert episode."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import envs
from envs.experts import ScriptedExpert
from envs.language_motion import (
    ABS_THRESHOLD,
    REL_THRESHOLD,
    VOCABULARY,
    label_action,
    label_episode,
    label_motion,
)

small = st.floats(-0.05, 0.05, allow_nan=False)
deltas = st.tuples(small, small, small)
anything = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6)

_OPPOSITE = {
    "forward": "backward",
    "backward": "forward",
    "left": "right",
    "right": "left",
    "up": "down",
    "down": "up",
}


def mirrored(phrase: str) -> str:
    return " ".join(_OPPOSITE.get(word, word) for word in phrase.split())


def test_vocabulary_is_fixed_and_distinct():
    assert len(VOCABULARY) == len(set(VOCABULARY)) == 29
    assert VOCABULARY[0] == "stop"
    assert {"move up", "move forward and left and down", "close gripper", "open gripper"} <= set(
        VOCABULARY
    )


@given(
    st.tuples(anything, anything, anything),
    anything,
    st.floats(0.0, 0.99),
    st.floats(0.0, 0.1),
)
def test_label_is_always_in_vocabulary(delta, gripper, rel, floor):
    label = label_motion(delta, gripper, rel_threshold=rel, abs_threshold=floor)
    assert label in VOCABULARY


@given(deltas)
def test_negating_the_motion_swaps_the_direction_words(delta):
    label = label_motion(delta)
    assert label_motion(-np.asarray(delta)) == mirrored(label)


@given(deltas, st.floats(0.1, 10.0))
def test_scaling_above_the_floor_keeps_the_label(delta, factor):
    d = np.asarray(delta)
    size = np.abs(d)
    largest = size.max()
    assume(largest > 0)
    cut = REL_THRESHOLD * largest
    assume(np.all(np.abs(size - cut) > 1e-9 * largest))  # not on the relative boundary
    named = size > cut
    assume(np.all(size[named] * min(factor, 1.0) > ABS_THRESHOLD * (1 + 1e-9)))
    assert label_motion(d * factor) == label_motion(d)


@given(st.floats(-ABS_THRESHOLD, ABS_THRESHOLD), st.integers(0, 2))
def test_no_motion_is_stop(value, axis):
    assert label_motion(np.zeros(3)) == "stop"
    delta = np.zeros(3)
    delta[axis] = value
    assert label_motion(delta) == "stop"


@given(st.lists(st.tuples(small, small, small, st.floats(0, 1)), min_size=1, max_size=30))
def test_episode_labels_one_phrase_per_step(rows):
    arr = np.asarray(rows)
    labels = label_episode(np.cumsum(arr[:, :3], axis=0), arr[:, 3])
    assert len(labels) == len(rows) and set(labels) <= set(VOCABULARY)
    assert labels[-1] == "stop"


@pytest.mark.parametrize(
    ("delta", "gripper", "expected"),
    [
        ((0, 0, 0), 0.0, "stop"),
        ((0, 0, -0.005), 0.0, "move down"),
        ((0, 0, 0.008), 0.0, "move up"),
        ((-0.004, 0.006, -0.005), 0.0, "move forward and left and down"),
        ((0.001, 0.006, 0), 0.0, "move forward"),  # x is under 30% of the largest motion
        ((0.0005, 0.0002, 0), 0.0, "stop"),  # under the 1 mm/step floor
        ((0.005, -0.005, 0), 0.0, "move backward and right"),
        ((0.005, 0, 0), -0.05, "close gripper"),  # the gripper wins
        ((0.005, 0, 0), 0.05, "open gripper"),
        ((0.005, 0, 0), 0.01, "move right"),  # fingers settling are not a gripper motion
    ],
)
def test_fixed_examples(delta, gripper, expected):
    assert label_motion(delta, gripper) == expected


def test_label_action():
    assert label_action([0, 1, 0, 0]) == "move forward"
    assert label_action([-1, 0, -0.5, 1]) == "move left and down"
    assert label_action([0, 0, 0.05, 0]) == "stop"  # 0.5 mm commanded
    assert label_action([0, 5, 0, 0]) == "move forward"  # clipped like the env does
    assert label_action([0, 0, -1, 1], previous_action=[0, 0, -1, -1]) == "close gripper"
    assert label_action([0, 0, 1, -1], previous_action=[0, 0, 1, 1]) == "open gripper"
    assert label_action([0, 0, 1, 1], previous_action=[0, 0, 1, 1]) == "move up"
    with pytest.raises(ValueError, match="shape"):
        label_action([0, 0, 1])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="NaN"):
        label_motion((np.nan, 0, 0))
    with pytest.raises(ValueError, match="shape"):
        label_episode(np.zeros((5, 2)), np.zeros(5))
    with pytest.raises(ValueError, match="window"):
        label_episode(np.zeros((5, 3)), np.zeros(5), window=0)


def test_pick_place_expert_episode_descends_then_grasps():
    env = envs.make("metaworld/pick-place-v3", obs=("state",))
    expert = ScriptedExpert("pick-place-v3")
    obs, _ = env.reset(options={"variation": 0})
    hand, opening = [], []
    for _ in range(100):
        action, procedure = expert.act(obs["state"])
        hand.append(procedure.positions["hand"])
        opening.append(obs["state"][3])
        obs, _, _, _, info = env.step(action)
        if info["success"]:
            break
    env.close()
    labels = label_episode(np.array(hand), np.array(opening))
    assert "close gripper" in labels
    first_down = next(i for i, label in enumerate(labels) if "down" in label)
    assert first_down < labels.index("close gripper")
    # After the grasp the puck is carried up toward the goal.
    assert any("up" in label for label in labels[labels.index("close gripper") :])
