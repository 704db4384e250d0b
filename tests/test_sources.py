"""The action sources of a robot session, each on its own and in the session loop on the
simulated arm: who acts, which steps are marked as a person's, when the policy starts afresh,
when an episode ends, and what a saved episode is labelled."""

from __future__ import annotations

import time

import numpy as np
import pytest

from il.data.store import DemoStore
from il.session import Session, robot_schema
from il.sources import InterventionSource, PolicySource, ReplaySource, TeleopSource
from robots.base import ActionSpec, Teleop, TeleopEvent, TeleopState
from robots.safety import SafeRobot, SafetyConfig
from robots.sim import SIM_SAFETY, SimArm

SPEC = ActionSpec(
    kind="ee_delta",
    names=("x", "y", "z", "gripper"),
    units=("m", "m", "m", "1"),
    low=-np.ones(4),
    high=np.ones(4),
)
HOLD = np.zeros(4)


class Still:
    """A policy that always asks for the same action, and counts how often it was reset."""

    spec = None

    def __init__(self, action: np.ndarray = HOLD) -> None:
        self.action = action
        self.resets = 0

    def reset(self, task: str | None = None) -> None:
        self.resets += 1

    def act(self, observation: dict) -> np.ndarray:
        return self.action


def reading(*events: TeleopEvent, active: bool = False, x: float = 0.0) -> TeleopState:
    """A teleop reading: the stick pushed `x` along +x, the deadman held while `active`."""
    twist = np.array([x, 0, 0, 0, 0, 0, -1.0])
    return TeleopState(action=twist, active=active, events=list(events), timestamp=time.time())


class Operator(Teleop):
    """A person at a teleop device playing a script: one reading per control step, then idle."""

    name = "script"

    def __init__(self, script: list[TeleopState]) -> None:
        self.script = list(script)

    def connect(self) -> None:
        pass

    def disconnect(self) -> None:
        pass

    def read(self) -> TeleopState:
        return self.script.pop(0) if self.script else reading()


@pytest.fixture(scope="module")
def arm():
    """The simulated reach arm behind the safety filter, connected once for the module."""
    safe = SafeRobot(SimArm("metaworld/reach-v3"), SafetyConfig.from_dict(SIM_SAFETY))
    with safe:
        yield safe


# --------------------------------------------------------------------------- on their own
def test_intervention_source_marks_the_operators_steps_and_resets_on_hand_back():
    policy = Still(np.array([0.0, 0.0, 0.0, -1.0]))
    source = InterventionSource(policy, SPEC)
    source.begin_episode(0)
    assert policy.resets == 1
    script = [reading(), reading(active=True, x=1.0), reading(active=True, x=1.0), reading()]
    chosen = [source.act({}, r) for r in script]
    assert [by_person for _, by_person in chosen] == [False, True, True, False]
    assert chosen[1][0][0] == 1.0 and chosen[3][0][3] == -1.0  # the operator's +x, then the policy
    assert policy.resets == 2  # handing back forgot the history from before the operator
    assert source.label() == "intervention"
    source.begin_episode(1)
    assert source.label() == "policy"  # a new episode, no intervention yet


def test_intervene_toggles_the_operator_in_and_out_without_the_deadman():
    policy = Still()
    source = InterventionSource(policy, SPEC)
    source.begin_episode(0)
    source.on_event(TeleopEvent.INTERVENE)
    assert source.act({}, reading(x=0.5))[1]  # the operator has it, deadman or not
    source.on_event(TeleopEvent.INTERVENE)
    assert not source.act({}, reading(x=0.5))[1]
    assert policy.resets == 2
    source.on_event(TeleopEvent.INTERVENE)
    source.begin_episode(1)  # a toggle does not outlive its episode
    assert not source.act({}, reading())[1]


def test_without_a_device_the_intervention_source_is_the_policy():
    policy = Still(np.array([0.1, 0.0, 0.0, 1.0]))
    source = InterventionSource(policy, SPEC)
    source.begin_episode(0)
    action, by_person = source.act({}, None)
    assert not by_person and np.array_equal(action, policy.action)
    assert source.label() == PolicySource(policy).label() == "policy"


def test_replay_source_plays_each_recording_in_its_scene_and_then_ends():
    first, second = np.arange(12.0).reshape(3, 4), np.ones((2, 4))
    source = ReplaySource([(first, 7), (second, None)])
    assert source.episodes == 2
    assert source.begin_episode(0) == 7
    played = []
    while not source.episode_over():
        played.append(source.act({}, None)[0])
    assert np.array_equal(played, first)
    assert source.begin_episode(1) is None and not source.episode_over()


def test_teleop_source_sends_the_operators_twist_in_the_robots_convention():
    action, by_person = TeleopSource(SPEC).act({}, reading(x=0.5))
    assert np.allclose(action, [0.5, 0.0, 0.0, -1.0]) and not by_person
    with pytest.raises(ValueError, match="needs a teleop device"):
        TeleopSource(SPEC).act({}, None)


# --------------------------------------------------------------------------- in the session
def test_a_session_stores_interventions_and_labels_each_episode(arm, tmp_path):
    policy = Still()
    # Episode 0: the operator holds the deadman for steps 3..5; episode 1: the policy alone.
    operator = Operator([reading(active=3 <= t < 6, x=1.0) for t in range(10)])
    with DemoStore.create(tmp_path / "s.zarr", robot_schema(arm, [], {})) as store:
        session = Session(arm, hz=400, policy=policy, teleop=operator, store=store)
        assert isinstance(session.source, InterventionSource)
        report = session.run(episodes=2, max_steps=10)
        marked = store.read_episode(0)["intervention"]
        assert list(store.episode_meta()["source"]) == ["intervention", "policy"]
        assert not store.read_episode(1)["intervention"].any()
    assert np.flatnonzero(marked).tolist() == [3, 4, 5]
    assert report.intervention_steps == 3
    assert [e["intervened"] for e in report.episodes] == [True, False]
    assert policy.resets == 3  # each episode's start, and the hand-back at step 6


def test_a_replayed_episode_ends_when_its_actions_run_out(arm):
    actions = np.tile([0.0, 0.0, 0.5, -1.0], (7, 1))
    session = Session(arm, hz=400, source=ReplaySource([(actions, 3)]))
    report = session.run(max_steps=100)
    assert report.steps == 7 and report.saved == 1
    assert report.episodes == [
        {
            "seed": 3,
            "success": False,
            "intervened": False,
            "mode": "replay",
            "index": 0,
            "steps": 7,
            "saved": True,
        }
    ]


@pytest.mark.parametrize("with_policy", [False, True])
def test_quitting_mid_episode_keeps_a_rollout_and_drops_an_unfinished_demonstration(
    arm, with_policy
):
    operator = Operator([reading(x=0.2)] * 5 + [reading(TeleopEvent.QUIT)])
    session = Session(arm, hz=400, teleop=operator, policy=Still() if with_policy else None)
    report = session.run(max_steps=100)
    assert report.episodes[0]["steps"] == 5
    assert (report.saved, report.discarded) == ((1, 0) if with_policy else (0, 1))


def test_a_session_takes_a_source_or_a_policy_and_an_operator_source_needs_a_device(arm):
    with pytest.raises(ValueError, match="not both"):
        Session(arm, hz=100, policy=Still(), source=PolicySource(Still()))
    with pytest.raises(ValueError, match="needs a teleop device"):
        Session(arm, hz=100)
