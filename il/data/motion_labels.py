"""Language-motion labels in a DemoStore: how a store's steps are labelled, labelling each new
episode as it is saved, the statistics `il info` shows, and labelling a whole store again
(`il relabel`).

RT-H's language motions ("move forward and left", "close gripper") are derived from the recorded
motion of the hand, never typed by a person. The phrases and their arithmetic are the pure
functions of `envs.language_motion`; this module decides, from what a store holds, which
recorded key is the hand and which the gripper, and which thresholds fit the arm's own scale:

    Meta-World expert   the hand the expert parsed and the gripper opening, Meta-World's scale
                        (the env family's `motion_labels`)
    a robot session     `obs/ee_pos` (else the summed `ee_delta` action) and the action's
                        gripper; the floor a tenth of the hand's top speed per step (the safety
                        limit at the session's rate, or the action's bounds) and a 50 ms
                        look-ahead, so a UR at 125 Hz is labelled at its scale, not Meta-World's
    joints only         no labels (a servo arm): a direction needs the hand's path in space,
                        which joint angles give only through the arm's kinematics; the store's
                        attributes and `il info` say so

The labels go to the per-step key `language_motion` (int16 indices into the attribute
`source.language_motion_vocabulary`, -1 where a signal was not finite), and the settings to
`source.language_motion_labels`, so a store says how it was labelled. A phrase a person (or a
program) gave in place of the policy's goes to `corrected_motion`, indices into
`source.corrected_motion_vocabulary` (-1: that step was not corrected), which starts as the
policy's phrases and grows by each new phrase before the first episode that uses it is saved;
beside it, `predicted_motion` keeps the phrase the policy said itself at every step (indices
into `source.predicted_motion_vocabulary`, the policy's), what learning from corrections
compares them with. Recorders label every
episode with the store's own settings as they save it, so a store labelled again with other
thresholds stays labelled one way when recording resumes into it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from envs.language_motion import VOCABULARY, MotionLabelling, floor_for, label_steps, window_for
from il.data.store import DemoStore, KeySpec, StoreError, StoreSchema
from robots.action import ActionSpec

__all__ = [
    "CORRECTED_KEY",
    "CORRECTED_VOCABULARY_ATTR",
    "KEY",
    "LABELS_ATTR",
    "PREDICTED_KEY",
    "PREDICTED_VOCABULARY_ATTR",
    "VOCABULARY_ATTR",
    "LabelError",
    "as_stored",
    "corrected_spec",
    "episode_labeller",
    "label_spec",
    "label_statistics",
    "predicted_spec",
    "labelling_of",
    "relabel",
    "robot_labelling",
    "with_labels",
]

KEY = "language_motion"
"""The per-step key of the labels."""
VOCABULARY_ATTR = "language_motion_vocabulary"
"""The store's `source` attribute listing the phrases the labels index."""
LABELS_ATTR = "language_motion_labels"
"""The store's `source` attribute saying how the labels were made (`MotionLabelling.to_json`),
or, as `{"unlabelled": why}`, why the store has none."""
CORRECTED_KEY = "corrected_motion"
"""The per-step key of language corrections: the phrase a step acted on in place of the
policy's own."""
CORRECTED_VOCABULARY_ATTR = "corrected_motion_vocabulary"
"""The store's `source` attribute listing the phrases the corrections index."""
PREDICTED_KEY = "predicted_motion"
"""The per-step key of the phrase the policy itself predicted, corrected or not."""
PREDICTED_VOCABULARY_ATTR = "predicted_motion_vocabulary"
"""The store's `source` attribute listing the phrases the predictions index."""
_LENGTHS = {"m": 1.0, "cm": 0.01, "mm": 0.001}


class LabelError(StoreError):
    """A store that cannot be labelled as asked; the message says why and what to do."""


def label_spec() -> KeySpec:
    """The store key of the labels."""
    return KeySpec(
        (),
        "int16",
        f"language motion: index into attrs source.{VOCABULARY_ATTR} (-1: no label); how it "
        f"was labelled in attrs source.{LABELS_ATTR}",
    )


def corrected_spec() -> KeySpec:
    """The store key of language corrections."""
    return KeySpec(
        (),
        "int16",
        f"language correction: the phrase this step acted on in place of the policy's, an index "
        f"into attrs source.{CORRECTED_VOCABULARY_ATTR} (-1: not corrected)",
    )


def predicted_spec() -> KeySpec:
    """The store key of the phrases a policy predicted while it was corrected or not."""
    return KeySpec(
        (),
        "int16",
        f"language motion the policy predicted at this step: an index into attrs "
        f"source.{PREDICTED_VOCABULARY_ATTR}",
    )


# --------------------------------------------------------------------------- how to label
def robot_labelling(
    keys: Mapping[str, KeySpec],
    action: Mapping[str, Any],
    source: Mapping[str, Any],
    fps: float,
    *,
    abs_threshold: float | None = None,
) -> MotionLabelling | str:
    """How the steps of a robot session (its store's keys, action convention, source with the
    safety limits, rate) are labelled, or one line saying why they cannot be.

    The hand is `obs/ee_pos` (metres) where the robot reports it, else the running sum of an
    `ee_delta` action; the gripper is the action's `gripper` dimension (a command, > 0 closes).
    The floor is `floor_for` the hand's top speed per step (`abs_threshold` when given) and
    the look-ahead `window_for` the rate."""
    try:
        spec = ActionSpec.from_json(action)
    except (KeyError, TypeError, ValueError):
        spec = None
    ee = keys.get("obs/ee_pos")
    if ee is not None and tuple(ee.shape) == (3,):
        hand: dict[str, Any] = {"hand": "obs/ee_pos"}
    elif spec is not None and spec.kind == "ee_delta" and _length_scale(spec) is not None:
        hand = {"hand": "action", "hand_is_action": True, "hand_scale": _length_scale(spec)}
    else:
        kind = spec.kind if spec is not None else "of no stated convention"
        return (
            f"no end-effector position (obs/ee_pos) and no end-effector action (the actions are "
            f"{kind}): a phrase such as 'move left' needs the hand's path in space, which joint "
            "angles give only through the arm's kinematics"
        )
    if abs_threshold is None:
        top = _top_step(spec, source.get("safety"), fps)
        if top is None:
            return (
                "no end-effector speed limit or action bound to scale the thresholds to; "
                "`il relabel STORE --abs-threshold M` labels it with a floor of M metres per step"
            )
        abs_threshold = floor_for(top)
    gripper: dict[str, Any] = {}
    if spec is not None and not spec.discrete and "gripper" in spec.names:
        column = spec.names.index("gripper")
        assert spec.low is not None and spec.high is not None
        if spec.low[column] >= -1.0 and spec.high[column] <= 1.0:  # a command, not a width
            gripper = {"gripper": "action", "gripper_column": column, "gripper_signal": "command"}
    return MotionLabelling(**hand, **gripper, window=window_for(fps), abs_threshold=abs_threshold)


def _length_scale(spec: ActionSpec) -> float | None:
    """Metres per unit of an end-effector action's x, y, z (None where not a length)."""
    units = set(spec.units[:3])
    if len(spec.names) < 3 or len(units) != 1 or next(iter(units)) not in _LENGTHS:
        return None
    return _LENGTHS[next(iter(units))]


def _top_step(spec: ActionSpec | None, safety: Any, fps: float) -> float | None:
    """The most the hand moves along one axis in one step (m): the least of the safety
    filter's speed limit over one period, its per-step limit and the action's bounds, where
    each is stated for the end effector. None where none is."""
    if spec is None or not spec.kind.startswith("ee_"):
        return None  # a joint convention's limits are joint speeds, not the hand's
    found: list[float] = []
    safety = safety if isinstance(safety, Mapping) else {}
    speed = safety.get("max_speed")
    if isinstance(speed, int | float) and speed > 0 and fps > 0:
        found.append(float(speed) / fps)
    scale = _length_scale(spec)
    if spec.kind == "ee_delta" and scale is not None:
        assert spec.low is not None and spec.high is not None
        bound = np.maximum(np.abs(spec.low[:3]), np.abs(spec.high[:3]))
        step = safety.get("max_step")
        if isinstance(step, int | float):
            bound = np.minimum(bound, float(step))
        elif isinstance(step, list | tuple) and len(step) >= 3:
            bound = np.minimum(bound, np.abs(np.asarray(step[:3], dtype=np.float64)))
        if np.all(np.isfinite(bound)) and bound.max() > 0:
            found.append(float(bound.max()) * scale)
    return min(found) if found else None


def labelling_of(
    schema: StoreSchema,
    *,
    rel_threshold: float | None = None,
    abs_threshold: float | None = None,
    gripper_threshold: float | None = None,
    window: int | None = None,
) -> MotionLabelling | str:
    """How a store is labelled, with any threshold given here in place of its own, or one line
    saying why it cannot be: the settings it recorded; else its env family's (a store recorded
    before labels); else, for a robot's store, what `robot_labelling` makes of what it
    recorded. A bad threshold is a `ValueError`."""
    changes = {
        "rel_threshold": rel_threshold,
        "abs_threshold": abs_threshold,
        "gripper_threshold": gripper_threshold,
        "window": window,
    }
    source = schema.source
    recorded = source.get(LABELS_ATTR)
    labelling: MotionLabelling | str
    if isinstance(recorded, Mapping) and "hand" in recorded:
        try:
            labelling = MotionLabelling.from_json(recorded)
        except (TypeError, ValueError) as e:
            return f"its recorded labelling (attrs source.{LABELS_ATTR}) cannot be read: {e}"
    elif "robot" in source:
        labelling = robot_labelling(
            schema.keys, schema.action, source, schema.fps, abs_threshold=abs_threshold
        )
    else:
        labelling = _family_labelling(source)
    if isinstance(labelling, str):
        return labelling
    missing = [k for k in labelling.keys if k not in schema.keys]
    if missing:
        return f"it has no key {missing[0]!r} to label from"
    return labelling.replace(**changes)


def _family_labelling(source: Mapping[str, Any]) -> MotionLabelling | str:
    """The labelling of an env family's expert recordings, by the family the store names."""
    env = source.get("env")
    if not env:
        return "it records neither an env family nor a robot whose hand could be labelled"
    import envs

    try:
        family = envs.family_of(str(env))
    except ValueError:
        return f"its env family {env!r} is not one this il knows"
    if family.motion_labels is None:
        return f"{family.name} recordings have no hand to label (their actions are not motions)"
    return family.motion_labels


# --------------------------------------------------------------------------- while recording
def with_labels(schema: StoreSchema, labelling: MotionLabelling | str) -> StoreSchema:
    """`schema` with the label key and its settings (or why there are none) in `source`."""
    source = {**schema.source, VOCABULARY_ATTR: list(VOCABULARY)}
    keys = dict(schema.keys)
    if isinstance(labelling, str):
        source[LABELS_ATTR] = {"unlabelled": labelling}
    else:
        source[LABELS_ATTR] = labelling.to_json()
        keys[KEY] = label_spec()
    return StoreSchema(keys=keys, fps=schema.fps, action=schema.action, source=source)


LATER_KEYS = (KEY, "obs/gripper_points", "track/")
"""Keys robot sessions store that older stores lack (a `/` at the end: every key under it)."""


def as_stored(path: str, schema: StoreSchema) -> StoreSchema:
    """The schema a session records into the store at `path` with: `schema`, less the keys
    added to sessions since that store was recorded (`LATER_KEYS`: the labels, the gripper's
    points, motion tracks) where it exists without them, so that recording resumes into it;
    `il relabel` labels all of it later."""

    def later(key: str) -> bool:
        return any(key == k or (k.endswith("/") and key.startswith(k)) for k in LATER_KEYS)

    if not any(later(k) for k in schema.keys):
        return schema
    try:
        with DemoStore.open(path) as existing:
            held = set(existing.schema.keys)
    except StoreError:
        return schema  # none there yet, or one whose problem opening it to append reports
    keys = {k: v for k, v in schema.keys.items() if not later(k) or k in held}
    if keys.keys() == schema.keys.keys():
        return schema
    source = dict(schema.source)
    if not any(k.startswith("track/") for k in keys):
        source.pop("tracks", None)
    return StoreSchema(keys=keys, fps=schema.fps, action=schema.action, source=source)


def episode_labeller(
    schema: StoreSchema,
) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]] | None:
    """What a recorder applies to an episode before it is saved into a store of `schema`: its
    labels, computed with the settings the store recorded (the same whether the store is new,
    resumed or labelled again since). None where the store keeps no labels, or recorded no
    settings for them (a store from before they were recorded keeps its recorder's labels)."""
    recorded = schema.source.get(LABELS_ATTR)
    if KEY not in schema.keys or not (isinstance(recorded, Mapping) and "hand" in recorded):
        return None
    try:
        labelling = MotionLabelling.from_json(recorded)
    except (TypeError, ValueError) as e:
        raise StoreError(
            f"the store's language-motion settings (attrs source.{LABELS_ATTR}) cannot be "
            f"read: {e}; record into a new store"
        ) from None
    dtypes = {k: np.dtype(schema.keys[k].dtype) for k in labelling.keys if k in schema.keys}

    def label(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # labelled from the values as the store keeps them, so `il relabel` finds the same
        try:
            stored = {k: np.asarray(arrays[k]).astype(dtype) for k, dtype in dtypes.items()}
            labels = label_steps(stored, labelling)
        except (KeyError, ValueError):  # a label is never worth an episode: -1, no label
            labels = np.full(len(next(iter(arrays.values()))), -1, dtype=np.int16)
        return {**arrays, KEY: labels}

    return label


# --------------------------------------------------------------------------- il info
def label_statistics(store: DemoStore, top: int = 5) -> dict[str, Any]:
    """What `il info` says about a store's labels: how many steps and episodes carry one, the
    `top` most frequent phrases with their share, how many phrases of the vocabulary are used,
    and how they were made; or, for a store without labels, why."""
    source = store.schema.source
    vocabulary = [str(p) for p in source.get(VOCABULARY_ATTR, VOCABULARY)]
    recorded = source.get(LABELS_ATTR)
    report: dict[str, Any] = {
        "key": KEY,
        "steps": store.num_steps,
        "episodes": store.num_episodes,
        "vocabulary_size": len(vocabulary),
        "labelling": dict(recorded) if isinstance(recorded, Mapping) else None,
        "interrupted": store.rewriting == KEY,
    }
    if KEY not in store.schema.keys:
        if isinstance(recorded, Mapping) and "unlabelled" in recorded:
            why = str(recorded["unlabelled"])
        else:
            found = labelling_of(store.schema)
            why = (
                f"recorded without them; `il relabel {store.path}` adds them"
                if isinstance(found, MotionLabelling)
                else found
            )
        return report | {"labelled_steps": 0, "labelled_episodes": 0, "unlabelled": why}
    labels = np.asarray(store.array(KEY)[: store.num_steps]).astype(np.int64)
    valid = (labels >= 0) & (labels < len(vocabulary))
    counts = np.bincount(labels[valid], minlength=len(vocabulary))
    starts = store.episode_starts
    whole = np.logical_and.reduceat(valid, starts) if store.num_steps else np.zeros(0, bool)
    order = np.argsort(-counts, kind="stable")
    labelled = int(valid.sum())
    return report | {
        "labelled_steps": labelled,
        "labelled_episodes": int(whole.sum()),
        "phrases_used": int((counts > 0).sum()),
        "most_frequent": [
            {"phrase": vocabulary[i], "steps": int(counts[i]), "share": float(counts[i] / labelled)}
            for i in order[:top]
            if counts[i] > 0
        ],
        "phrases": {vocabulary[i]: int(counts[i]) for i in order if counts[i] > 0},
    }


# --------------------------------------------------------------------------- il relabel
def relabel(
    path: str,
    *,
    rel_threshold: float | None = None,
    abs_threshold: float | None = None,
    gripper_threshold: float | None = None,
    window: int | None = None,
    on_episode: Callable[[], None] | None = None,
) -> MotionLabelling:
    """Label every episode of the store at `path` again, from its recorded data, with the given
    thresholds in place of the store's own (unchanged where not given), and record how.

    Adds the labels to a store recorded without them. The store is rewritten with
    `DemoStore.rewrite_key`, so it stays readable and verifiable if this stops anywhere, and
    running it again finishes the job. A store that cannot be labelled is a `LabelError`, a
    bad threshold a `ValueError`, one line each."""
    with DemoStore.open(path, mode="a") as store:
        labelling = labelling_of(
            store.schema,
            rel_threshold=rel_threshold,
            abs_threshold=abs_threshold,
            gripper_threshold=gripper_threshold,
            window=window,
        )
        if isinstance(labelling, str):
            raise LabelError(f"{path} cannot be labelled with language motions: {labelling}")
        signals = {k: store.array(k)[: store.num_steps] for k in labelling.keys}
        rows = np.zeros(store.num_steps, dtype=np.int16)
        for episode in store.episodes():
            steps = {k: v[episode.start : episode.end] for k, v in signals.items()}
            rows[episode.start : episode.end] = label_steps(steps, labelling)
            if on_episode is not None:
                on_episode()
        spec = store.schema.keys.get(KEY) or label_spec()
        source = {
            **store.schema.source,
            VOCABULARY_ATTR: list(VOCABULARY),
            LABELS_ATTR: labelling.to_json(),
        }
        store.rewrite_key(KEY, spec, rows, source)
    return labelling
