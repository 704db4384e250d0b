"""Who chooses a robot's action at each step of a session: one object per answer.

    TeleopSource        an operator drives the arm                      (il record --robot)
    PolicySource        a policy acts alone                             (il deploy)
    InterventionSource  a policy acts, a person may take over           (il deploy --teleop)
    ReplaySource        recorded episodes' actions are played again     (il replay)

The `Session` loop is the same for all of them: it handles the operator's events, the rate,
the cameras, the safety filter and the saving, and at each step of an episode asks its source
for an action, given the policy observation and the teleop reading. A source never touches the
robot, so each can be driven without one, and a method that learns from a person's corrections
(none is built yet) can reuse `InterventionSource` outside the CLI.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from robots.base import ActionSpec, TeleopEvent, TeleopState, teleop_action

if TYPE_CHECKING:
    from il.data.store import DemoStore

__all__ = [
    "ActingPolicy",
    "ActionSource",
    "InterventionSource",
    "PolicySource",
    "ReplaySource",
    "TeleopSource",
]


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
    error before the arm moves.
    """

    mode: str = ""
    episodes: int | None = None
    keep_on_quit: bool = True
    needs_teleop: bool = False

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
