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

A store says how its labels were made: `MotionLabelling` names the recorded signals (which key
is the hand, which the gripper) and the thresholds, and `label_steps` turns one episode's
recorded arrays into vocabulary indices with it. An arm other than Meta-World's moves at its own
scale (a UR at 125 Hz moves a fifth of a millimetre per step at a brisk pace), so its floor is
`floor_for` its top speed per step and its look-ahead `window_for` its rate, rather than
Meta-World's numbers.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "ABS_FRACTION",
    "ABS_THRESHOLD",
    "ACTION_SCALE",
    "EFFORT_THRESHOLD",
    "GRIPPER_SIGNALS",
    "GRIPPER_THRESHOLD",
    "REL_THRESHOLD",
    "VOCABULARY",
    "WINDOW",
    "WINDOW_SECONDS",
    "MotionLabelling",
    "canonical_phrase",
    "floor_for",
    "label_action",
    "label_episode",
    "label_motion",
    "label_steps",
    "window_for",
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
WINDOW = 4
"""Steps `label_episode` looks ahead: 50 ms at Meta-World's 80 steps per second, long enough
that a step's label is the motion it starts rather than one step's jitter."""
WINDOW_SECONDS = 0.05
"""The same look-ahead in seconds, for an arm at another rate (`window_for`)."""
ABS_FRACTION = 0.1
"""`ABS_THRESHOLD` as a fraction of the hand's top speed per step (0.001 m of Meta-World's
0.01 m): another arm's floor is this fraction of its own top speed (`floor_for`)."""
GRIPPER_SIGNALS = ("opening", "command")
"""What a recorded gripper value means: its opening (0 closed … 1 open, Meta-World's state[3])
or a command in [-1, 1] where a value above 0 closes (the gripper dimension of an action)."""

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


def canonical_phrase(phrase: str) -> str:
    """A phrase as a person types it ("Move  Up") → as the vocabulary writes it ("move up"), so
    the same words are one phrase whatever their case and spacing."""
    return " ".join(phrase.lower().split())


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
    window: int = WINDOW,
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
    if not (np.all(np.isfinite(hand)) and np.all(np.isfinite(grip))):
        raise ValueError("hand_positions and gripper_opening must be finite (no NaN or inf)")
    indices = _window_indices(hand, grip, window, len(hand), **thresholds)
    return [VOCABULARY[i] for i in indices]


def _window_indices(
    hand: np.ndarray,
    grip: np.ndarray,
    window: int,
    steps: int,
    *,
    rel_threshold: float = REL_THRESHOLD,
    abs_threshold: float = ABS_THRESHOLD,
    gripper_threshold: float = GRIPPER_THRESHOLD,
) -> np.ndarray:
    """`label_motion` of the motion over the next `window` steps, for each of the first `steps`
    of the positions `hand` (N, 3) and openings `grip` (N,), as vocabulary indices; -1 where a
    value in the window is not finite.

    The same arithmetic as `label_motion`, on every step at once (an episode of a thousand
    steps in well under a millisecond); `label_episode` is checked against it step by step."""
    if isinstance(window, bool) or int(window) != window or window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    if not 0.0 <= rel_threshold < 1.0:
        raise ValueError(f"rel_threshold must be in [0, 1), got {rel_threshold}")
    t = np.arange(steps)
    end = np.minimum(t + int(window), len(hand) - 1)
    count = np.maximum(end - t, 1)
    delta = (hand[end] - hand[t]) / count[:, None]
    gripper = (grip[end] - grip[t]) / count
    size = np.abs(delta)
    largest = size.max(axis=1, keepdims=True) if steps else size
    named = (size > rel_threshold * largest) & (size > abs_threshold)
    code = np.zeros(steps, dtype=np.int64)
    for _, _, axis in _AXES:  # per axis 0 unnamed, 1 positive word, 2 negative word
        word = np.where(named[:, axis], np.where(delta[:, axis] > 0, 1, 2), 0)
        code = code * 3 + word
    indices = _PHRASE_OF_CODE[code]
    indices[gripper > gripper_threshold] = _INDEX[OPEN]
    indices[gripper < -gripper_threshold] = _INDEX[CLOSE]
    finite = np.all(np.isfinite(delta), axis=1) & np.isfinite(gripper)
    indices[~finite] = -1
    return indices


def _phrase_of_code() -> np.ndarray:
    """Vocabulary index of each base-3 code of per-axis words (`_window_indices`)."""
    table = np.zeros(3 ** len(_AXES), dtype=np.int64)
    for code in range(len(table)):
        words, rest = [], code
        digits = []
        for _ in _AXES:
            digits.append(rest % 3)
            rest //= 3
        for (pos, neg, _), digit in zip(_AXES, reversed(digits), strict=True):
            if digit:
                words.append(pos if digit == 1 else neg)
        table[code] = _INDEX["move " + " and ".join(words) if words else STOP]
    return table


_INDEX = {phrase: i for i, phrase in enumerate(VOCABULARY)}
_PHRASE_OF_CODE = _phrase_of_code()


def floor_for(top_step: float) -> float:
    """The absolute threshold for a hand whose top speed is `top_step` metres per step:
    `ABS_FRACTION` of it, as Meta-World's 0.001 m is of its 0.01 m. A fixed floor in metres
    would call every motion of a slow arm "stop", or the drift of a fast one a motion."""
    if not (math.isfinite(top_step) and top_step > 0):
        raise ValueError(f"top speed per step must be a positive number, got {top_step}")
    return ABS_FRACTION * float(top_step)


def window_for(fps: float) -> int:
    """Steps that make `WINDOW_SECONDS` at `fps` steps per second (4 at Meta-World's 80, 6 for
    a UR at 125 Hz); `WINDOW` where the rate is not known."""
    if not (math.isfinite(fps) and fps > 0):
        return WINDOW
    return max(1, round(WINDOW_SECONDS * fps))


def _finite_number(name: str, value: Any, low: float, *, below: float | None = None) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number < low or (below is not None and number >= below):
        where = f"in [{low:g}, {below:g})" if below is not None else f"at least {low:g}"
        raise ValueError(f"{name} must be a finite number {where}, got {value}")
    return number


@dataclass(frozen=True)
class MotionLabelling:
    """How a store's steps become language motions: which recorded key is the hand, which the
    gripper, how far ahead a label looks and the thresholds. Stored with the labels (its
    `to_json` in the store's attributes), so a store says how it was labelled and can be
    labelled again the same way or with other thresholds.

    Keys are the store's per-step keys. The hand is the first three columns of `hand`, in
    metres after `hand_scale` (0.01 for an action in cm), along the frame's x (right), y
    (forward) and z (up): positions, or with `hand_is_action` per-step displacements (an
    `ee_delta` action, whose running sum is where the commands take the hand). The gripper is
    column `gripper_column` of `gripper`, read as `gripper_signal` (see `GRIPPER_SIGNALS`).
    Thresholds are those of `label_motion`: `abs_threshold` in metres per step,
    `gripper_threshold` in opening per step.
    """

    hand: str
    hand_is_action: bool = False
    hand_scale: float = 1.0
    gripper: str | None = None
    gripper_column: int = 0
    gripper_signal: str = "opening"
    window: int = WINDOW
    rel_threshold: float = REL_THRESHOLD
    abs_threshold: float = ABS_THRESHOLD
    gripper_threshold: float = GRIPPER_THRESHOLD

    def __post_init__(self) -> None:
        if not self.hand:
            raise ValueError("a motion labelling needs the key of the hand's position or motion")
        window = self.window
        if isinstance(window, bool) or not isinstance(window, int | float) or window != int(window):
            raise ValueError(f"window must be a whole number of steps, got {window!r}")
        if window < 1:
            raise ValueError(f"window must be at least 1 step, got {window}")
        object.__setattr__(self, "window", int(window))
        number = _finite_number
        object.__setattr__(
            self, "rel_threshold", number("rel_threshold", self.rel_threshold, 0.0, below=1.0)
        )
        object.__setattr__(self, "abs_threshold", number("abs_threshold", self.abs_threshold, 0.0))
        object.__setattr__(
            self, "gripper_threshold", number("gripper_threshold", self.gripper_threshold, 0.0)
        )
        scale = number("hand_scale", self.hand_scale, 0.0)
        if scale == 0:
            raise ValueError("hand_scale must be above 0")
        object.__setattr__(self, "hand_scale", scale)
        if self.gripper_signal not in GRIPPER_SIGNALS:
            raise ValueError(
                f"gripper_signal must be one of {', '.join(GRIPPER_SIGNALS)}, "
                f"got {self.gripper_signal!r}"
            )
        object.__setattr__(self, "gripper_column", int(self.gripper_column))

    @property
    def keys(self) -> tuple[str, ...]:
        """The store keys the labels are computed from."""
        return (self.hand,) if self.gripper in (None, self.hand) else (self.hand, self.gripper)

    @property
    def thresholds(self) -> dict[str, float]:
        """The keyword arguments of `label_motion`."""
        return {
            "rel_threshold": self.rel_threshold,
            "abs_threshold": self.abs_threshold,
            "gripper_threshold": self.gripper_threshold,
        }

    def replace(self, **changes: Any) -> MotionLabelling:
        """A copy with some fields changed; None values leave a field as it is."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def describe(self) -> str:
        """One line for people: where from, how far ahead, which thresholds."""
        hand = f"{self.hand}[:3]" + (" summed" if self.hand_is_action else "")
        if self.gripper is None:
            gripper = "no gripper"
        else:
            meaning = "opening" if self.gripper_signal == "opening" else "command, > 0 closes"
            gripper = f"gripper {self.gripper}[{self.gripper_column}] ({meaning})"
        return (
            f"hand {hand}, {gripper}; over {self.window} steps; an axis is named above "
            f"{self.rel_threshold:g} of the largest and {self.abs_threshold:g} m/step, the "
            f"gripper above {self.gripper_threshold:g}/step"
        )

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "description": self.describe()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MotionLabelling:
        """The labelling a store recorded (fields it does not know are ignored: notes)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def label_steps(steps: Mapping[str, np.ndarray], labelling: MotionLabelling) -> np.ndarray:
    """Language-motion labels of one episode, (T,) int16 indices into `VOCABULARY`, from its
    recorded arrays (store key → (T, ...)) as `labelling` says: -1 marks a step whose window
    holds a value that is not finite, which no phrase describes.

    A label looks at the state before its step and `window` steps later. Observed positions
    are states before each step, so the last step is "stop"; a hand summed from actions, and a
    gripper read from commands, become those states too (a command acts from its own step on),
    so the last step is labelled by its own action."""
    raw = np.asarray(steps[labelling.hand], dtype=np.float64)
    if raw.ndim != 2 or raw.shape[1] < 3:
        raise ValueError(
            f"{labelling.hand} must hold (T, 3) or wider per step to give a hand, got {raw.shape}"
        )
    T = len(raw)
    hand = raw[:, :3] * labelling.hand_scale
    if labelling.hand_is_action:
        hand = np.concatenate([np.zeros((1, 3)), np.cumsum(hand, axis=0)])
    n = len(hand)
    if labelling.gripper is None:
        grip = np.zeros(n)
    else:
        values = np.asarray(steps[labelling.gripper], dtype=np.float64).reshape(T, -1)
        if not 0 <= labelling.gripper_column < values.shape[1]:
            raise ValueError(
                f"{labelling.gripper} has {values.shape[1]} column(s) per step, no column "
                f"{labelling.gripper_column} for the gripper"
            )
        column = values[:, labelling.gripper_column]
        if labelling.gripper_signal == "command":
            opening = (1.0 - np.clip(column, -1.0, 1.0)) / 2.0
            # before step t the gripper does what step t - 1 commanded (the first: its own)
            grip = np.concatenate([opening[:1], opening])[:n]
        else:
            grip = np.concatenate([column, column[-1:]])[:n] if T else column
    indices = _window_indices(hand, grip, labelling.window, T, **labelling.thresholds)
    return indices.astype(np.int16)


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
