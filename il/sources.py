"""Who chooses a robot's action at each step of a session: one object per answer.

    TeleopSource        an operator drives the arm                      (il record --robot)
    PolicySource        a policy acts alone                             (il deploy)
    InterventionSource  a policy acts, a person may take over           (il deploy --teleop)
    CorrectionSource    a policy acts, a person corrects it in words    (il deploy --correct)
    ReplaySource        recorded episodes' actions are played again     (il replay)

The `Session` loop is the same for all of them: it handles the operator's events, the rate,
the cameras, the safety filter and the saving, and at each step of an episode asks its source
for an action, given the policy observation and the teleop reading. A source never touches the
robot, so each can be driven without one, and a method that learns from a person's corrections
(none is built yet) can reuse `InterventionSource` outside the CLI.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from envs.language_motion import CLOSE, OPEN, canonical_phrase, floor_for, label_motion
from il.data.motion_labels import (
    CORRECTED_KEY,
    CORRECTED_VOCABULARY_ATTR,
    KEY,
    PREDICTED_KEY,
    PREDICTED_VOCABULARY_ATTR,
    corrected_spec,
    predicted_spec,
)
from il.data.store import StoreSchema
from robots.base import ActionSpec, TeleopEvent, TeleopState, teleop_action

if TYPE_CHECKING:
    from il.data.store import DemoStore

__all__ = [
    "CORRECTABLE",
    "ActingPolicy",
    "ActionSource",
    "CorrectionSource",
    "InterventionSource",
    "NotCorrectable",
    "PolicySource",
    "ReplaySource",
    "TeleopSource",
    "correction_phrase",
]

CORRECTABLE = ("rth", "rth-intervene")
"""The methods whose policies take language corrections: their intermediate output is a
language motion (`intermediate_name == "language_motion"`). Kept as a table so that a message
naming them imports no method; a test checks it against the methods themselves."""


class ActingPolicy(Protocol):
    """What a source needs of a policy (a trained `il.policies.base.Policy`, or a script)."""

    def reset(self, task: str | None = None) -> None: ...

    def act(self, observation: dict[str, Any]) -> np.ndarray: ...


class ActionSource:
    """The hooks the session loop calls; the defaults suit a source that needs none of them.

    `mode` names the session on the status line and in the report. `episodes` is how many
    episodes the source holds (a recording), None when it acts for as many as the session asks.
    `keep_on_quit` says whether the steps so far of an episode the operator quits are data.
    `needs_teleop`: the source acts on the teleop reading, so a session without a device is an
    error before the arm moves. `takes_text`: the source reads lines the operator types, so the
    session asks the device for them (`Teleop.enable_typing`).

    A source that stores something of its own per step (a person's correction) says so through
    `store_schema`, `recording_into`, `step_entries` and `store_attributes`; one with something
    to tell the operator, through `status` (the live line) and `summary` (the report).
    """

    mode: str = ""
    episodes: int | None = None
    keep_on_quit: bool = True
    needs_teleop: bool = False
    takes_text: bool = False

    def store_schema(self, schema: StoreSchema) -> StoreSchema:
        """The schema of a new store for this source's episodes: `schema` (what the robot
        records) with the keys and `source` attributes the source adds."""
        return schema

    def recording_into(self, store: DemoStore) -> None:
        """The store the session saves into, as opened (new or resumed): a source whose
        attributes grow carries on from the store's; one whose keys it lacks refuses it
        (`ValueError`)."""

    def step_entries(self) -> dict[str, Any]:
        """What the source adds to the record of the step it acted on last (its keys of
        `store_schema`)."""
        return {}

    def store_attributes(self) -> dict[str, Any]:
        """`source` attributes the store must hold before the episode just ended is committed
        ({}: nothing beyond what it was created with)."""
        return {}

    def status(self) -> str:
        """What the source adds to the live status line ("" for nothing)."""
        return ""

    def summary(self) -> dict[str, Any]:
        """What the source counted over the session, for its report."""
        return {}

    def begin_episode(self, index: int) -> int | None:
        """Get ready for the session's episode `index`; returns the seed to home the robot with
        (None: the robot picks its own), so a replayed episode plays in its recorded scene."""
        return None

    def on_event(self, event: TeleopEvent) -> None:
        """An operator event the loop leaves to the source (INTERVENE), in the order given."""

    def act(
        self, observation: dict[str, Any], reading: TeleopState | None
    ) -> tuple[np.ndarray, bool]:
        """The action for this step, and whether a person (not a policy) chose it."""
        raise NotImplementedError

    def episode_over(self) -> bool:
        """Whether the source has no more actions for this episode (a recording ran out)."""
        return False

    def label(self) -> str:
        """The `source` a saved episode is stored with (see `il.data.store.SOURCES`)."""
        raise NotImplementedError


class TeleopSource(ActionSource):
    """An operator drives the arm: each step sends what the teleop device asks for."""

    mode = "teleop"
    keep_on_quit = False  # a demonstration the operator did not stop is not finished
    needs_teleop = True

    def __init__(self, spec: ActionSpec) -> None:
        self.spec = spec

    def act(
        self, observation: dict[str, Any], reading: TeleopState | None
    ) -> tuple[np.ndarray, bool]:
        if reading is None:
            raise ValueError("a teleop session needs a teleop device")
        # The operator is the demonstrator here, not someone correcting a policy: no
        # intervention to mark.
        return teleop_action(reading, self.spec), False

    def label(self) -> str:
        return "teleop"


class PolicySource(ActionSource):
    """A policy acts alone; each episode starts it with a fresh history, told the task when it
    was trained on several."""

    mode = "deploy"

    def __init__(self, policy: ActingPolicy, *, task: str = "") -> None:
        self.policy = policy
        self.task = task

    def begin_episode(self, index: int) -> int | None:
        self.reset_policy()
        return None

    def reset_policy(self) -> None:
        """Forget the history and queued actions (they belong to another episode, or predate an
        operator's moves)."""
        tasks = getattr(getattr(self.policy, "spec", None), "tasks", None)
        self.policy.reset(task=self.task if tasks else None)

    def act(
        self, observation: dict[str, Any], reading: TeleopState | None
    ) -> tuple[np.ndarray, bool]:
        return np.asarray(self.policy.act(observation), dtype=np.float64), False

    def label(self) -> str:
        return "policy"


class InterventionSource(PolicySource):
    """A policy acts while a person with a teleop device can take over at any step.

    The operator has the arm while they hold the device's deadman (`reading.active`) or after
    they toggled INTERVENE (until they toggle it back): their action is sent and the step is
    marked as an intervention. Handing back resets the policy, whose history predates the
    operator's moves. An episode with any intervention is stored as source=intervention, the
    data that learning from corrections (such as HG-DAgger) takes.
    """

    def __init__(self, policy: ActingPolicy, spec: ActionSpec, *, task: str = "") -> None:
        super().__init__(policy, task=task)
        self.spec = spec
        self.toggled = False
        """INTERVENE came an odd number of times this episode: the operator keeps the arm."""
        self.operating = False
        """The operator chose the latest step's action."""
        self.intervened = False
        """The operator chose some step of this episode (its `label`)."""

    def begin_episode(self, index: int) -> int | None:
        self.toggled = self.operating = self.intervened = False
        return super().begin_episode(index)

    def on_event(self, event: TeleopEvent) -> None:
        if event is TeleopEvent.INTERVENE:
            self.toggled = not self.toggled

    def act(
        self, observation: dict[str, Any], reading: TeleopState | None
    ) -> tuple[np.ndarray, bool]:
        operating = reading is not None and (self.toggled or reading.active)
        if self.operating and not operating:
            self.reset_policy()
        self.operating = operating
        if reading is None or not operating:
            return super().act(observation, reading)
        self.intervened = True
        return teleop_action(reading, self.spec), True

    def label(self) -> str:
        return "intervention" if self.intervened else "policy"


class NotCorrectable(ValueError):
    """A policy that cannot take language corrections (it has no language-motion layer)."""


def correction_phrase(reading: TeleopState) -> str | None:
    """The language motion an operator's reading asks for, or None where it asks for none.

    A gripper key or button held down is "close gripper" or "open gripper", whichever way its
    press turned the gripper. A direction held (keys, a stick, the puck) is what the labeller
    calls that motion, `label_motion` of the commanded x, y, z: the twist's fractions of top
    speed read as a hand whose top speed is 1 per step, with the labeller's floor of a tenth of
    it, so the phrase is always the vocabulary's own and names the motion the same input would
    have recorded (w and r on the keyboard: "move right and up"). Turning has no words: a twist
    that only rotates asks for nothing."""
    if reading.gripper_held:
        return CLOSE if reading.action[6] > 0 else OPEN
    direction = np.asarray(reading.action[:3], dtype=np.float64)
    floor = floor_for(1.0)
    if not np.all(np.isfinite(direction)) or np.abs(direction).max() <= floor:
        return None
    return label_motion(direction, abs_threshold=floor)


class CorrectionSource(PolicySource):
    """A policy acts while a person corrects it in words: the phrase its action is read from
    (its language motion, RT-H's layer between the task and the action) becomes theirs, and
    the action is still the policy's, read off that phrase, through the safety filter as ever.

    What the operator says comes from the teleop reading: a held direction or gripper key is
    its phrase (`correction_phrase`) for as long as it is held; a line typed on the keyboard
    (t, the phrase, Enter) holds until an empty line clears it or the episode ends, and a held
    key goes before it while held. A phrase outside the policy's vocabulary is embedded by the
    text model on a thread of its own (the loop never waits for the model) and applies once it
    is ready; without the model it is refused on the status line and the session goes on.

    A corrected step reaches the policy through `override_intermediate` for that one step,
    counts as an intervention, and stores the phrase in `corrected_motion`: an index into the
    store's `source.corrected_motion_vocabulary`, which starts as the policy's vocabulary and
    takes each new phrase before the first episode that uses it is saved (-1 for a step the
    policy said itself). Every step also keeps the phrase the policy predicted itself, in
    `predicted_motion` (indices into `source.predicted_motion_vocabulary`, the policy's), so the
    recording says what the person changed. An episode with any corrected step is stored as
    source=intervention.
    """

    needs_teleop = True
    takes_text = True

    def __init__(self, policy: ActingPolicy, *, task: str = "") -> None:
        if getattr(policy, "intermediate_name", None) != KEY or not getattr(
            policy, "vocabulary", None
        ):
            name = getattr(policy, "name", type(policy).__name__)
            raise NotCorrectable(
                f"a {name} policy has no language motion to correct; policies that take "
                f"language corrections: {', '.join(CORRECTABLE)}"
            )
        super().__init__(policy, task=task)
        self.vocabulary: list[str] = [str(p) for p in policy.vocabulary]  # type: ignore[attr-defined]
        """The phrases `corrected_motion` indexes: the store's, which grows."""
        self._index = {canonical_phrase(p): i for i, p in enumerate(self.vocabulary)}
        self._policy_phrases = dict(self._index)
        """The policy's own phrases (`predicted_motion` indexes them): these never grow."""
        self._ready = set(self._index)
        """Phrases the policy can act on at once (embedded)."""
        self._refused: dict[str, str] = {}
        """Phrases the policy cannot act on, with why."""
        self._preparing: dict[str, Future] = {}
        self.typed: str | None = None
        """The typed phrase that holds."""
        self._typed_next: str | None = None
        """A typed phrase waiting for its embedding."""
        self.typing: str | None = None
        """The line the operator is typing (None: not typing)."""
        self.message = ""
        """The latest problem, for the status line."""
        self.corrected_steps = 0
        self.intervened = False
        """Some step of this episode was corrected (its `label`)."""
        self._step_motion = -1
        self._step_predicted = -1
        self._last: tuple[str, str, bool] | None = None
        """(phrase acted on, phrase predicted, corrected) at the latest step."""

    # --- the store -------------------------------------------------------------------------------
    def store_schema(self, schema: StoreSchema) -> StoreSchema:
        keys = {**schema.keys, CORRECTED_KEY: corrected_spec(), PREDICTED_KEY: predicted_spec()}
        source = {
            **schema.source,
            CORRECTED_VOCABULARY_ATTR: list(self.vocabulary),
            PREDICTED_VOCABULARY_ATTR: list(self.vocabulary),
        }
        return StoreSchema(keys=keys, fps=schema.fps, action=schema.action, source=source)

    def recording_into(self, store: DemoStore) -> None:
        for key in (CORRECTED_KEY, PREDICTED_KEY):
            if key not in store.schema.keys:
                raise ValueError(
                    f"{store.path} has no per-step key {key} for language corrections; record "
                    "them into a new store"
                )
        predicted = store.schema.source.get(PREDICTED_VOCABULARY_ATTR)
        if isinstance(predicted, list) and [canonical_phrase(str(p)) for p in predicted] != list(
            self._policy_phrases
        ):
            raise ValueError(
                f"{store.path} holds the corrections of a policy with other language motions; "
                "record this one's into a new store"
            )
        stored = store.schema.source.get(CORRECTED_VOCABULARY_ATTR)
        if isinstance(stored, list) and stored:
            self.vocabulary = [str(p) for p in stored]
            self._index = {canonical_phrase(p): i for i, p in enumerate(self.vocabulary)}

    def step_entries(self) -> dict[str, Any]:
        return {
            CORRECTED_KEY: np.int16(self._step_motion),
            PREDICTED_KEY: np.int16(self._step_predicted),
        }

    def store_attributes(self) -> dict[str, Any]:
        return {CORRECTED_VOCABULARY_ATTR: list(self.vocabulary)}

    # --- acting ----------------------------------------------------------------------------------
    def begin_episode(self, index: int) -> int | None:
        # a correction belongs to its scene: the next episode starts with the policy's own words
        self.intervened = False
        self.typed = self._typed_next = None
        self.policy.clear_override()  # type: ignore[attr-defined]
        return super().begin_episode(index)

    def act(
        self, observation: dict[str, Any], reading: TeleopState | None
    ) -> tuple[np.ndarray, bool]:
        held = None
        if reading is not None:
            self.typing = reading.typing
            for line in reading.typed:
                self._take_line(line)
            held = correction_phrase(reading)
        if self._typed_next is not None and self._can_say(self._typed_next):
            self.typed, self._typed_next = self._typed_next, None
        elif self._typed_next is not None and self._typed_next in self._refused:
            self._typed_next = None  # the phrase that held before goes on holding
        phrase = held or self.typed
        if phrase is not None and self._can_say(phrase):
            self.policy.override_intermediate(phrase, steps=1)  # type: ignore[attr-defined]
        action = np.asarray(self.policy.act(observation), dtype=np.float64)
        corrected = bool(self.policy.intermediate_overridden)  # type: ignore[attr-defined]
        self._step_motion = self._motion_index(phrase) if corrected and phrase else -1
        self.corrected_steps += corrected
        self.intervened = self.intervened or corrected
        predicted = self.policy.predicted_intermediate  # type: ignore[attr-defined]
        self._step_predicted = self._policy_phrases.get(canonical_phrase(str(predicted)), -1)
        self._last = (str(self.policy.intermediate), str(predicted), corrected)  # type: ignore[attr-defined]
        return action, corrected

    def label(self) -> str:
        return "intervention" if self.intervened else "policy"

    def _take_line(self, line: str) -> None:
        """A line the operator entered: a phrase to hold, or an empty line to clear it."""
        phrase = canonical_phrase(line)
        self.message = ""
        if not phrase:
            self.typed = self._typed_next = None
            return
        self._typed_next = phrase
        self._can_say(phrase)  # starts its embedding where it needs one

    def _can_say(self, phrase: str) -> bool:
        """Whether the policy can act on `phrase` now; starts embedding one it has not seen
        (on a thread: the first use of the text model takes seconds) and says on the status
        line why one is refused."""
        phrase = canonical_phrase(phrase)
        if phrase in self._ready:
            return True
        if phrase in self._refused:
            self.message = self._refused[phrase]
            return False
        future = self._preparing.get(phrase)
        if future is None:
            self._preparing[phrase] = _in_background(self._prepare, phrase)
            self.message = f"preparing {phrase!r} with the text model"
            return False
        if not future.done():
            return False
        del self._preparing[phrase]
        error = future.exception()
        if error is None:
            self._ready.add(phrase)
            self.message = ""
            return True
        self._refused[phrase] = self.message = " ".join(str(error).split())
        return False

    def _prepare(self, phrase: str) -> None:
        """Make the policy ready to act on `phrase` (its embedding, cached by the policy)."""
        embed = getattr(self.policy, "embed_motion", None)
        if embed is not None:
            embed(phrase)

    def _motion_index(self, phrase: str) -> int:
        """`phrase`'s index in the store's vocabulary, added where it is new."""
        key = canonical_phrase(phrase)
        if key not in self._index:
            self._index[key] = len(self.vocabulary)
            self.vocabulary.append(key)
        return self._index[key]

    # --- telling the operator --------------------------------------------------------------------
    def status(self) -> str:
        if self.typing is not None:
            return f"type a phrase: {self.typing}_ (Enter applies it, an empty line clears)"
        parts = []
        if self._last is not None:
            said, predicted, corrected = self._last
            parts.append(f"corrected: {said} (policy: {predicted})" if corrected else said)
        if self.typed is not None and (self._last is None or self._last[0] != self.typed):
            parts.append(f"typed: {self.typed}")
        parts.append(f"{self.corrected_steps} corrected steps")
        if self.message:
            parts.append(self.message)
        return " | ".join(parts)

    def summary(self) -> dict[str, Any]:
        return {"corrected_steps": self.corrected_steps}


def _in_background(work: Any, *args: Any) -> Future:
    """`work(*args)` on a daemon thread, its outcome in the returned future: a session that
    ends meanwhile does not wait for it."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(work(*args))
        except BaseException as e:  # handed to whoever reads the future
            future.set_exception(e)

    threading.Thread(target=run, name="phrase-embedding", daemon=True).start()
    return future


class ReplaySource(ActionSource):
    """Recorded episodes' actions sent again, one episode per recording, each homed with the
    seed it was recorded with (so a simulated scene is the same one); an episode ends when its
    actions run out."""

    mode = "replay"

    def __init__(self, recordings: Sequence[tuple[np.ndarray, int | None]]) -> None:
        self.recordings = list(recordings)
        self.episodes = len(self.recordings)
        self._actions: np.ndarray = np.zeros((0, 0))
        self._step = 0

    @staticmethod
    def action_key(store: DemoStore) -> str:
        """The key a replay sends: what the robot executed, not the labels where they differ."""
        return "executed_action" if "executed_action" in store.schema.keys else "action"

    @classmethod
    def from_store(cls, store: DemoStore, indices: Sequence[int]) -> ReplaySource:
        """The episodes `indices` of an open `DemoStore`, with the actions the robot executed:
        a recording made with action noise executed `executed_action`, not its labels."""
        key = cls.action_key(store)
        seeds = store.episode_meta()["seed"]
        return cls(
            [
                (store.read_episode(i, [key])[key], int(seeds[i]) if seeds[i] >= 0 else None)
                for i in indices
            ]
        )

    def begin_episode(self, index: int) -> int | None:
        actions, seed = self.recordings[index]
        self._actions, self._step = np.asarray(actions), 0
        return seed

    def act(
        self, observation: dict[str, Any], reading: TeleopState | None
    ) -> tuple[np.ndarray, bool]:
        action = self._actions[self._step]
        self._step += 1
        return action, False

    def episode_over(self) -> bool:
        return self._step >= len(self._actions)

    def label(self) -> str:
        # A replay is a demonstration played again (the store has no `replay` source).
        return "teleop"
