"""Language motions: short phrases such as "move forward and left" for what the hand does.

RT-H (Belkhale et al. 2024) puts a layer of *language motions* between the task instruction and
the action: a policy first predicts "move arm forward", then the action given that phrase. The
phrases are cheap to derive from the robot's own motion, so every demonstration gets them for
free. This module derives them for Meta-World with pure functions, from hand displacements, from
the gripper opening, or from an action.

Axes in Meta-World's world frame, seen from the robot's base: +x "right", −x "left", +y
"forward" (away from the robot), −y "backward", +z "up", −z "down". A phrase names every axis
whose motion is a sizeable part of the largest one, in a fixed order (forward/backward, then
left/right, then up/down), e.g. "move forward and left and down". A gripper that closes or opens
takes priority ("close gripper", "open gripper"); no motion is "stop". Thresholds are per
control step, in Meta-World's scale: the hand moves at most about 0.01 m per step, and the
gripper opening (state[3]) spans [0, 1].
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

__all__ = [
    "ABS_THRESHOLD",
    "ACTION_SCALE",
    "EFFORT_THRESHOLD",
    "GRIPPER_THRESHOLD",
    "REL_THRESHOLD",
    "VOCABULARY",
    "label_action",
    "label_episode",
    "label_motion",
]

REL_THRESHOLD = 0.3
"""An axis is named when its motion exceeds this fraction of the largest axis motion."""
ABS_THRESHOLD = 0.001
"""… and exceeds this many metres per step: a tenth of the hand's top speed (~0.01 m/step), well
above the drift of a hand that holds still (< 0.0002 m/step)."""
GRIPPER_THRESHOLD = 0.025
"""Change of the gripper opening (state[3], 0 closed … 1 open) per step that counts as closing
or opening. A closing gripper moves ~0.05 per step; the fingers settling on a grasped object move
less than 0.02 per step and must not read as "open gripper"."""
ACTION_SCALE = 0.01
"""Metres the hand's mocap target moves per step for an action component of 1 (Meta-World's
`action_scale` of 1/100)."""
EFFORT_THRESHOLD = 0.5
"""Change of the grab effort (in [-1, 1]) between two actions that counts as a gripper command."""

# (positive word, negative word, state axis), in the order the phrase names them.
_AXES: tuple[tuple[str, str, int], ...] = (
    ("forward", "backward", 1),
    ("right", "left", 0),
    ("up", "down", 2),
)
STOP = "stop"
CLOSE = "close gripper"
OPEN = "open gripper"


def _move_phrases() -> list[str]:
    phrases = []
    for n in (1, 2, 3):
        for axes in itertools.combinations(_AXES, n):
            for words in itertools.product(*[(pos, neg) for pos, neg, _ in axes]):
                phrases.append("move " + " and ".join(words))
    return phrases


VOCABULARY: tuple[str, ...] = (STOP, *_move_phrases(), CLOSE, OPEN)
"""Every phrase the labeler can return (29), in a fixed order: indices can be stored."""


def _vector(delta: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(delta, dtype=np.float64)
    if arr.shape != (3,):
        raise ValueError(f"{name} must have shape (3,), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf: {arr}")
    return arr


def label_motion(
    delta_xyz: Sequence[float] | np.ndarray,
    gripper_delta: float = 0.0,
    *,
    rel_threshold: float = REL_THRESHOLD,
    abs_threshold: float = ABS_THRESHOLD,
    gripper_threshold: float = GRIPPER_THRESHOLD,
) -> str:
    """The phrase for one step's hand displacement `delta_xyz` (m) and change of the gripper
    opening `gripper_delta` (negative = closing).

    An axis is named when |Δ_i| > rel_threshold · max|Δ| and |Δ_i| > abs_threshold. A gripper
    change beyond `gripper_threshold` wins over any motion: grasping is the event that matters.
    """
    delta = _vector(delta_xyz, "delta_xyz")
    if not 0.0 <= rel_threshold < 1.0:
        raise ValueError(f"rel_threshold must be in [0, 1), got {rel_threshold}")
    if not np.isfinite(gripper_delta):
        raise ValueError(f"gripper_delta must be finite, got {gripper_delta}")
    if gripper_delta < -gripper_threshold:
        return CLOSE
    if gripper_delta > gripper_threshold:
        return OPEN
    size = np.abs(delta)
    largest = size.max()
    words = [
        pos if delta[axis] > 0 else neg
        for pos, neg, axis in _AXES
        if size[axis] > rel_threshold * largest and size[axis] > abs_threshold
    ]
    return "move " + " and ".join(words) if words else STOP


def label_episode(
    hand_positions: np.ndarray,
    gripper_opening: np.ndarray,
    window: int = 4,
    **thresholds: float,
) -> list[str]:
    """One phrase per step of an episode: what the hand and gripper do over the next `window`
    steps (fewer at the end; the last step is "stop").

    Looking a few steps ahead labels the motion the step starts rather than the jitter of a
    single step. Displacements are averaged per step so the same thresholds apply as for
    `label_motion`; `thresholds` go to it (`rel_threshold`, `abs_threshold`, ...).
    """
    hand = np.asarray(hand_positions, dtype=np.float64)
    grip = np.asarray(gripper_opening, dtype=np.float64)
    if hand.ndim != 2 or hand.shape[1] != 3:
        raise ValueError(f"hand_positions must have shape (T, 3), got {hand.shape}")
    if grip.shape != (len(hand),):
        raise ValueError(f"gripper_opening must have shape ({len(hand)},), got {grip.shape}")
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    labels = []
    last = len(hand) - 1
    for t in range(len(hand)):
        end = min(t + window, last)
        steps = max(end - t, 1)
        labels.append(
            label_motion((hand[end] - hand[t]) / steps, (grip[end] - grip[t]) / steps, **thresholds)
        )
    return labels


def label_action(
    action: Sequence[float] | np.ndarray,
    previous_action: Sequence[float] | np.ndarray | None = None,
    **thresholds: float,
) -> str:
    """The phrase for a Meta-World action (Δxyz in [-1, 1] units, grab effort).

    The motion is the displacement the action commands (clipped, times `ACTION_SCALE`). The
    grab effort is a level, not a change, so a gripper phrase needs `previous_action`: an effort
    rising by more than `EFFORT_THRESHOLD` is "close gripper", falling is "open gripper".
    """
    act = np.asarray(action, dtype=np.float64)
    if act.shape != (4,):
        raise ValueError(f"action must have shape (4,), got {act.shape}")
    if previous_action is not None:
        prev = np.asarray(previous_action, dtype=np.float64)
        if prev.shape != (4,):
            raise ValueError(f"previous_action must have shape (4,), got {prev.shape}")
        change = act[3] - prev[3]
        if change > EFFORT_THRESHOLD:
            return CLOSE
        if change < -EFFORT_THRESHOLD:
            return OPEN
    return label_motion(np.clip(act[:3], -1.0, 1.0) * ACTION_SCALE, 0.0, **thresholds)
