"""The safety filter: properties that must hold for any action and any state, and the
`SafeRobot` wrapper's latching e-stop, watchdog and locking, driven through a small arm."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robots.base import ActionSpec, Robot
from robots.safety import (
    BANKED_PERIODS,
    COMMAND_RATE,
    ESTOP,
    NO_STATE,
    NON_FINITE,
    VELOCITY,
    WATCHDOG,
    WORKSPACE,
    SafeRobot,
    SafetyConfig,
    filter_command,
)
from robots.sim import SIM_SAFETY, SimArm

ROOT = Path(__file__).resolve().parents[1]
METRES = {"m": 1.0, "cm": 0.01, "mm": 0.001}
TOL = 1e-9  # metres / relative: float rounding of unit conversions, far below any hardware
FAST = settings(deadline=None, max_examples=150, database=None)
FEW = settings(deadline=None, max_examples=25, database=None)

any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)
finite = st.floats(-1e6, 1e6, allow_nan=False)
sane = st.floats(-3.0, 3.0, allow_nan=False)


def meta_world_spec() -> ActionSpec:
    return ActionSpec(
        "ee_delta", ("x", "y", "z", "grip"), ("cm", "cm", "cm", "1"), -np.ones(4), np.ones(4)
    )


def ur_servol_spec() -> ActionSpec:
    """A UR arm's servoL convention at 125 Hz: 2 mm and 8 mrad per step, then the gripper."""
    step, turn = 0.002, 0.008
    return ActionSpec(
        "ee_delta",
        ("x", "y", "z", "roll", "pitch", "yaw", "gripper"),
        ("m", "m", "m", "rad", "rad", "rad", "1"),
        np.array([-step] * 3 + [-turn] * 3 + [-1.0]),
        np.array([step] * 3 + [turn] * 3 + [1.0]),
    )


class ToyArm(Robot):
    """A point hand that moves by each command: enough of a robot to drive SafeRobot."""

    name = "toy"

    def __init__(self, spec: ActionSpec | None = None, ee_pos=(0.0, 0.6, 0.2), fps=0.0) -> None:
        self._spec = spec or meta_world_spec()
        self.ee_pos = np.asarray(ee_pos, dtype=np.float64)
        self._fps = fps
        self._connected = False
        self.sent: list[np.ndarray] = []
        self.observations = 0
        self.holds = threading.Event()
        self._inside = False
        self.overlaps = 0

    @property
    def action_spec(self) -> ActionSpec:
        return self._spec

    @property
    def observation_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"ee_pos": (3,)}

    @property
    def fps(self) -> float:
        return self._fps

    def connect(self) -> None:
        self._connected = True

    def disconnect(self) -> None:
        self._connected = False

    @property
    def is_connected(self) -> bool:
        return self._connected

    def observe(self) -> dict:
        self.observations += 1
        return {"ee_pos": self.ee_pos.copy(), "timestamp": time.time()}

    def command(self, action: np.ndarray) -> np.ndarray:
        if self._inside:
            self.overlaps += 1
        self._inside = True
        try:
            action = np.array(action, dtype=np.float64)
            time.sleep(0)  # let another thread in, if the lock did not keep it out
            self.ee_pos = self.ee_pos + action[:3] * 0.01
            self.sent.append(action)
            if not np.any(action[:3]):
                self.holds.set()
            return action
        finally:
            self._inside = False


@st.composite
def ee_delta_case(draw):
    units = (*(draw(st.sampled_from(list(METRES))) for _ in range(3)), "1")
    low = np.array([draw(st.floats(-5, 0)) for _ in range(3)] + [-1.0])
    high = np.array([draw(st.floats(0, 5)) for _ in range(3)] + [1.0])
    spec = ActionSpec("ee_delta", ("x", "y", "z", "grip"), units, low, high)
    box = None
    if draw(st.booleans()):
        lo = np.array([draw(st.floats(-1, 1)) for _ in range(3)])
        box = (lo, lo + np.array([draw(st.floats(0, 1)) for _ in range(3)]))
    step = draw(st.none() | st.lists(st.floats(0, 5), min_size=4, max_size=4) | st.floats(0, 5))
    config = SafetyConfig(
        workspace_low=None if box is None else tuple(box[0]),
        workspace_high=None if box is None else tuple(box[1]),
        max_step=step,
        max_speed=draw(st.none() | st.floats(0.01, 5)),
        period=draw(st.floats(0.001, 0.1)),
        watchdog_periods=None,
    )
    action = np.array(draw(st.lists(any_float | sane, min_size=4, max_size=4)))
    state = {"ee_pos": np.array([draw(sane) for _ in range(3)])}
    return spec, config, action, state


def translation_m(spec: ActionSpec, action: np.ndarray) -> np.ndarray:
    return action[:3] * np.array([METRES[u] for u in spec.units[:3]])


def outside(p: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """How far each axis of `p` lies outside [lo, hi] (0 inside)."""
    return np.maximum(lo - p, 0) + np.maximum(p - hi, 0)


@FAST
@given(ee_delta_case())
def test_ee_delta_sent_action_is_always_safe(case):
    spec, config, action, state = case
    result = filter_command(action, state, spec, config)
    sent = result.action_sent
    assert sent.shape == (4,) and np.all(np.isfinite(sent))
    assert np.all(sent >= spec.low) and np.all(sent <= spec.high)
    if config.max_step is not None:
        step = np.broadcast_to(np.asarray(config.max_step), (4,))
        assert np.all(np.abs(sent) <= step)
    t = translation_m(spec, sent)
    if config.max_speed is not None:
        assert np.linalg.norm(t) / config.period <= config.max_speed * (1 + TOL)
    if config.workspace_low is not None:
        lo, hi = np.array(config.workspace_low), np.array(config.workspace_high)
        p = state["ee_pos"]
        before, after = outside(p, lo, hi), outside(p + t, lo, hi)
        assert np.all(after <= before + TOL)  # never farther out, axis by axis
        if not before.any():
            assert np.all(after <= TOL)  # inside stays inside
    if not np.all(np.isfinite(action)):
        assert result.held and NON_FINITE in result.reasons
        assert np.array_equal(sent, np.zeros(4))


@FAST
@given(ee_delta_case(), st.floats(-0.01, 0.2))
def test_a_command_moves_no_further_than_its_time_budget_allows(case, budget):
    spec, config, action, state = case
    result = filter_command(action, state, spec, config, time_budget=budget)
    at_rate = filter_command(action, state, spec, config)
    if config.max_speed is None or result.held:
        return
    allowed = min(max(budget, 0.0), config.period)
    t = translation_m(spec, result.action_sent)
    assert np.linalg.norm(t) <= config.max_speed * allowed * (1 + TOL) + TOL
    assert result.travel_time <= allowed * (1 + TOL) + TOL
    assert result.action_sent[3] == at_rate.action_sent[3]  # the budget never moves the gripper


@FAST
@given(ee_delta_case())
def test_an_action_within_every_limit_passes_unchanged(case):
    spec, config, action, state = case
    first = filter_command(action, state, spec, config)
    again = filter_command(first.action_sent, state, spec, config)
    if not first.held:
        # What the filter sends is itself safe, so a second pass leaves it (nearly) alone.
        assert np.allclose(again.action_sent, first.action_sent, rtol=1e-9, atol=1e-12)


@FAST
@given(st.lists(any_float, min_size=4, max_size=4), st.lists(sane, min_size=3, max_size=3))
def test_meta_world_config_keeps_the_hand_in_its_box(action, pos):
    config = SafetyConfig.from_yaml(ROOT / "configs/robots/safety.yaml")
    spec = meta_world_spec()
    config.check(spec)
    p = np.array(pos)
    result = filter_command(np.array(action), {"ee_pos": p}, spec, config)
    t = result.action_sent[:3] * 0.01
    lo, hi = np.array(config.workspace_low), np.array(config.workspace_high)
    assert np.all(outside(p + t, lo, hi) <= outside(p, lo, hi) + TOL)
    assert np.linalg.norm(t) <= config.max_speed * config.period * (1 + TOL)
    assert np.all(np.abs(result.action_sent) <= 1.0)


def test_moving_back_into_the_box_is_allowed_and_further_out_is_not():
    spec = meta_world_spec()
    config = SafetyConfig((0, 0, 0), (1, 1, 1), watchdog_periods=None)
    below = {"ee_pos": np.array([0.5, 0.5, -0.1])}
    up = filter_command(np.array([0, 0, 1.0, 0]), below, spec, config)
    assert np.allclose(up.action_sent, [0, 0, 1.0, 0]) and not up.reasons
    down = filter_command(np.array([0.5, 0, -1.0, 0]), below, spec, config)
    assert np.allclose(down.action_sent, [0.5, 0, 0, 0]) and WORKSPACE in down.reasons
    at_wall = {"ee_pos": np.array([0.5, 0.5, 0.995])}
    slide = filter_command(np.array([1.0, 0, 1.0, 0]), at_wall, spec, config)
    assert np.allclose(slide.action_sent, [1.0, 0, 0.5, 0])  # slides along the wall


def test_a_check_without_the_state_it_needs_holds():
    spec = meta_world_spec()
    config = SafetyConfig((0, 0, 0), (1, 1, 1), watchdog_periods=None)
    for state in (None, {}, {"ee_pos": np.array([np.nan, 0, 0])}):
        result = filter_command(np.array([0.1, 0, 0, 0]), state, spec, config)
        assert result.held and NO_STATE in result.reasons
        assert np.array_equal(result.action_sent, np.zeros(4))


@FAST
@given(
    st.lists(any_float | sane, min_size=4, max_size=4),
    st.lists(sane, min_size=3, max_size=3),
    st.none() | st.floats(0, 1),
    st.none() | st.floats(0.01, 5),
)
def test_ee_absolute_target_stays_in_the_box_and_near_the_hand(action, pos, step, speed):
    units = ("m", "m", "m", "1")
    spec = ActionSpec(
        "ee_absolute", ("x", "y", "z", "grip"), units, -3 * np.ones(4), 3 * np.ones(4)
    )
    box = (np.array([-1.0, 0.0, 0.0]), np.array([1.0, 1.0, 0.5]))
    config = SafetyConfig(tuple(box[0]), tuple(box[1]), step, speed, 0.01, None)
    p = np.array(pos)
    hold = np.r_[p, 0.0]
    result = filter_command(np.array(action), {"ee_pos": p}, spec, config, hold=hold)
    sent = result.action_sent
    assert np.all(np.isfinite(sent)) and np.all(np.abs(sent) <= 3)
    if not np.all(np.isfinite(action)):
        assert result.held and np.array_equal(sent, hold)
        return
    d = sent[:3] - p
    if step is not None:
        assert np.all(np.abs(d) <= step + TOL)
    if speed is not None:
        assert np.linalg.norm(d) <= speed * 0.01 * (1 + TOL) + TOL
    assert np.all(outside(sent[:3], *box) <= outside(p, *box) + TOL)
    if step is None and speed is None:
        assert np.all(outside(sent[:3], *box) <= TOL)


@FAST
@given(
    st.lists(any_float | sane, min_size=3, max_size=3),
    st.lists(sane, min_size=2, max_size=2),
    st.floats(0.01, 10),
    st.none() | st.floats(0, 1),
)
def test_joint_conventions_limit_joint_speed_and_step(action, q, speed, step):
    names, units = ("j0", "j1", "grip"), ("rad", "deg", "1")
    period = 0.01
    config = SafetyConfig(max_step=step, max_speed=speed, period=period, watchdog_periods=None)
    rad = np.array([1.0, np.pi / 180, 0.0])
    q = np.array(q)
    for kind in ("joint_delta", "joint_absolute"):
        spec = ActionSpec(kind, names, units, -2 * np.ones(3), 2 * np.ones(3))
        hold = np.zeros(3) if kind == "joint_delta" else np.r_[q, 0.0].clip(-2, 2)
        result = filter_command(np.array(action), {"joint_pos": q}, spec, config, hold=hold)
        sent = result.action_sent
        assert np.all(np.isfinite(sent)) and np.all(np.abs(sent) <= 2)
        if result.held:
            assert not np.all(np.isfinite(action)) and np.array_equal(sent, hold)
            continue
        motion = sent if kind == "joint_delta" else sent - np.r_[q, 0.0]
        if kind == "joint_absolute":
            motion[2] = 0.0  # the gripper has no observed position: bounds only
            if np.any(np.abs(q) > 2):
                continue  # joints beyond the bounds: the bounds win (documented)
        assert np.max(np.abs(motion) * rad) / period <= speed * (1 + TOL) + TOL
        if step is not None:
            assert np.all(np.abs(motion) <= step + TOL)


def test_config_errors_say_what_to_fix():
    with pytest.raises(ValueError, match=r"unknown key.*max_sped.*valid keys: workspace_low"):
        SafetyConfig.from_dict({"max_sped": 1.0})
    with pytest.raises(ValueError, match="both workspace_low and workspace_high"):
        SafetyConfig.from_dict({"workspace_low": [0, 0, 0]})
    with pytest.raises(ValueError, match="max_speed needs period"):
        SafetyConfig(max_speed=1.0).check(meta_world_spec())
    joints = ActionSpec("joint_delta", ("j0",), ("rad",), [-1], [1])
    with pytest.raises(ValueError, match="workspace box needs an end-effector"):
        SafetyConfig((0, 0, 0), (1, 1, 1)).check(joints)
    with pytest.raises(ValueError, match="max_step has 2 values"):
        SafetyConfig(max_step=[1, 1]).check(meta_world_spec())
    with pytest.raises(ValueError, match="watchdog needs period"):
        SafeRobot(ToyArm(), SafetyConfig())
    with pytest.raises(ValueError, match="has 3 values"):
        filter_command(np.zeros(3), None, meta_world_spec(), SafetyConfig())
    with pytest.raises(ValueError, match="max_angular_speed needs period"):
        SafetyConfig(max_angular_speed=1.0).check(ur_servol_spec())
    with pytest.raises(ValueError, match=r"rotation increments \(ee_delta\).*joint speed"):
        SafetyConfig(max_angular_speed=1.0, period=0.01).check(joints)
    with pytest.raises(ValueError, match="needs rotation dims in rad or deg"):
        SafetyConfig(max_angular_speed=1.0, period=0.01).check(meta_world_spec())
    with pytest.raises(ValueError, match="max_angular_speed must be a positive number"):
        SafetyConfig.from_dict({"max_angular_speed": -1})


def no_watchdog(**kw) -> SafetyConfig:
    return SafetyConfig(watchdog_periods=None, **kw)


@FEW
@given(st.lists(st.lists(any_float | sane, min_size=4, max_size=4), min_size=1, max_size=8))
def test_estop_latches_until_reset_whatever_is_commanded(actions):
    arm = ToyArm()
    with SafeRobot(arm, no_watchdog()) as robot:
        robot.estop()
        for a in actions:
            robot.command(np.array(a))
            assert robot.last_result.held and robot.last_result.reasons == (ESTOP,)
        assert all(not np.any(sent) for sent in arm.sent)
        assert robot.rejections[ESTOP] == len(actions)
        robot.reset_estop()
        assert np.allclose(robot.command(np.array([0.5, -0.5, 0.25, 1.0])), [0.5, -0.5, 0.25, 1])


def test_the_filter_uses_a_fresh_observation_or_takes_one():
    arm = ToyArm()
    config = no_watchdog(workspace_low=(-1, 0, 0), workspace_high=(1, 1, 1))
    with SafeRobot(arm, config) as robot:
        robot.observe()
        robot.command(np.array([1.0, 0, 0, 0]))
        assert arm.observations == 1  # the caller's observation was used
        robot.command(np.array([1.0, 0, 0, 0]))
        assert arm.observations == 2  # none since the last command: the filter observed
    arm.ee_pos = np.array([0.0, 0.6, 0.995])
    with SafeRobot(arm, config) as robot:
        robot.observe()
        arm.ee_pos = np.array([0.0, 0.6, 0.5])  # moved by someone else after the observation
        sent = robot.command(np.array([0, 0, 1.0, 0]))
        assert np.allclose(sent, [0, 0, 0.5, 0])  # clamped against the observed state


def test_the_inner_robot_is_not_reachable_through_public_attributes():
    arm = ToyArm()
    robot = SafeRobot(arm, no_watchdog())
    for name in dir(robot):
        if not name.startswith("_"):
            assert getattr(robot, name, None) is not arm, name
    with pytest.raises(ValueError, match="already wrapped"):
        SafeRobot(robot, no_watchdog())
    assert robot.identity()["safety"]["watchdog_periods"] is None
    assert robot.action_spec is arm.action_spec and robot.name == "toy"


def test_a_stalled_caller_trips_the_watchdog_and_a_command_resumes():
    arm = ToyArm()
    robot = SafeRobot(arm, SafetyConfig(period=0.01, watchdog_periods=3))
    with robot:
        time.sleep(0.1)
        assert robot.watchdog_trips == 0 and not arm.sent  # not armed before a first command
        robot.command(np.array([0.5, 0, 0, 1.0]))
        assert arm.holds.wait(timeout=5.0), "the watchdog never held the arm"
        deadline = time.monotonic() + 5.0
        while robot.watchdog_trips < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert robot.watchdog_trips == 1 and robot.stalled
        assert robot.rejections[WATCHDOG] == 1
        sent = robot.command(np.array([0.25, 0, 0, 1.0]))
        assert np.allclose(sent, [0.25, 0, 0, 1.0]) and not robot.stalled
    assert not robot.is_connected
    assert not [t for t in threading.enumerate() if t.name == "watchdog-toy"]


def test_commands_from_threads_and_the_watchdog_never_overlap_in_the_driver():
    arm = ToyArm()
    robot = SafeRobot(arm, SafetyConfig(period=0.001, watchdog_periods=1))

    def drive():
        for _ in range(200):
            robot.command(np.array([0.01, 0, 0, 0]))

    with robot:
        threads = [threading.Thread(target=drive) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
    assert arm.overlaps == 0
    assert robot.stats()["commands"] == 600


def test_velocity_limit_through_the_robot():
    arm = ToyArm(fps=80.0)
    with SafeRobot(arm, no_watchdog(max_speed=0.4)) as robot:
        assert robot.config.period == pytest.approx(1 / 80)
        sent = robot.command(np.array([1.0, 1.0, 0.0, -1.0]))
    speed = np.linalg.norm(sent[:3] * 0.01) * 80
    assert speed == pytest.approx(0.4, rel=1e-6)
    assert np.isclose(sent[0], sent[1]) and sent[3] == -1.0  # direction and gripper kept
    assert robot.rejections == {"velocity": 1}


def test_home_makes_the_next_command_observe_afresh():
    arm = ToyArm()
    with SafeRobot(arm, no_watchdog()) as robot:
        robot.observe()
        assert robot.home(3) is None  # a real arm's home does nothing
        robot.command(np.zeros(4))
        assert arm.observations == 2


# --------------------------------------------------------------------------- speed per second
class Clock:
    """A monotonic clock the test moves by hand, so command timing is exact and repeatable."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ToyJoints(Robot):
    """Two joints (rad and deg) and a gripper (% open) that reach each target at once."""

    name = "toy-joints"

    def __init__(self) -> None:
        self.joint_pos = np.zeros(3)
        self.sent: list[np.ndarray] = []

    @property
    def action_spec(self) -> ActionSpec:
        units = ("rad", "deg", "%")
        return ActionSpec(
            "joint_absolute", ("j0", "j1", "grip"), units, [-3, -180, 0], [3, 180, 100]
        )

    @property
    def observation_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"joint_pos": (3,)}

    @property
    def fps(self) -> float:
        return 30.0

    @property
    def is_connected(self) -> bool:
        return True

    def connect(self) -> None:
        pass

    def disconnect(self) -> None:
        pass

    def hold(self) -> np.ndarray:
        return self.joint_pos.copy()

    def observe(self) -> dict:
        return {"joint_pos": self.joint_pos.copy(), "timestamp": time.time()}

    def command(self, action: np.ndarray) -> np.ndarray:
        self.joint_pos = np.array(action, dtype=np.float64)
        self.sent.append(self.joint_pos)
        return self.joint_pos


def moved_m(sent: list[np.ndarray]) -> np.ndarray:
    """|x, y, z| of each Meta-World-convention action (cm), in metres."""
    return np.array([np.linalg.norm(a[:3]) * 0.01 for a in sent])


def test_commands_faster_than_the_control_rate_keep_to_the_speed_limit():
    clock = Clock()
    arm = ToyArm(fps=80.0)
    speed, period = 0.4, 1 / 80
    ask = np.array([1.0, 1.0, 0.0, -1.0])  # the full bounds on a diagonal: 1.41 cm
    rng = np.random.default_rng(0)
    with SafeRobot(arm, no_watchdog(max_speed=speed), clock=clock) as robot:
        late = 0.0
        for _ in range(200):  # at the control rate
            robot.command(ask)
            # the loop's next step is due a period after this one was, and wakes up to 0.45
            # periods late: a late step is followed by an early one
            wake = rng.uniform(0.0, 0.45 * period)
            clock.advance(period - late + wake)
            late = wake
        assert robot.rejections == {VELOCITY: 200}
        at_rate, arm.sent = arm.sent, []
        clock.advance(period)
        for _ in range(200):  # then at 1 kHz
            robot.command(ask)
            clock.advance(0.001)
        assert robot.last_result.reasons == (VELOCITY, COMMAND_RATE)
        assert robot.rejections[COMMAND_RATE] == 199
    # At the control rate every command is a full step at max_speed, jitter or not.
    np.testing.assert_allclose(moved_m(at_rate), speed * period)
    # At 1 kHz a full step (banked at the control rate), then 1 ms worth each.
    fast = moved_m(arm.sent)
    assert fast[0] == pytest.approx(speed * period)
    np.testing.assert_allclose(fast[2:], speed * 0.001)
    # 0.2 s of commands moved the hand 0.2 s worth, plus what the start had banked
    assert fast.sum() <= speed * (0.2 + BANKED_PERIODS * period) * (1 + TOL)
    assert all(a[3] == -1.0 for a in arm.sent)  # the gripper is never slowed
    for a in arm.sent:  # and the direction is kept
        assert a[0] == pytest.approx(a[1]) and a[2] == 0.0


def test_a_pause_banks_one_step_and_a_half_and_a_reconnect_starts_with_a_full_step():
    clock = Clock()
    arm = ToyArm(fps=80.0)
    speed, period = 0.4, 1 / 80
    ask = np.array([1.0, 0.0, 0.0, -1.0])  # 1 cm: two periods' worth at 0.4 m/s
    robot = SafeRobot(arm, no_watchdog(max_speed=speed), clock=clock)
    with robot:
        for _ in range(20):
            robot.command(ask)
            clock.advance(0.001)
        clock.advance(60.0)  # a minute without commands
        arm.sent.clear()
        for _ in range(10):
            robot.command(ask)
            clock.advance(0.001)
    after_pause = moved_m(arm.sent)
    np.testing.assert_allclose(
        after_pause[:3], [speed * period, speed * (0.5 * period + 0.001), speed * 0.001]
    )
    assert after_pause.sum() <= speed * (0.01 + BANKED_PERIODS * period) * (1 + TOL)
    with robot:  # connected again, with no time passed: the arm starts from rest
        sent = robot.command(ask)
    assert moved_m([sent])[0] == pytest.approx(speed * period)


def test_joint_targets_at_1khz_keep_to_the_joint_speed_and_leave_the_gripper_alone():
    clock = Clock()
    arm = ToyJoints()
    speed, period = 3.0, 1 / 30
    radians = np.array([1.0, np.pi / 180])
    times, positions = [clock.now], [arm.joint_pos[:2] * radians]
    with SafeRobot(arm, no_watchdog(max_speed=speed), clock=clock) as robot:
        for _ in range(100):
            clock.advance(0.001)
            robot.command(np.array([2.0, 90.0, 100.0]))  # far away, and open the gripper
            times.append(clock.now)
            positions.append(arm.joint_pos[:2] * radians)
        assert robot.last_result.reasons == (VELOCITY, COMMAND_RATE)
    assert all(a[2] == 100.0 for a in arm.sent)  # the gripper went straight to its target
    t, q = np.array(times), np.array(positions)
    steps = np.abs(np.diff(q, axis=0)).max(axis=1)  # the fastest joint's move per command
    np.testing.assert_allclose(steps[2:], speed * 0.001)
    for i in range(len(t)):
        fastest = np.abs(q[i + 1 :] - q[i]).max(axis=1, initial=0.0)
        assert np.all(fastest <= speed * (t[i + 1 :] - t[i] + BANKED_PERIODS * period) + TOL)
    assert q[-1, 1] / q[-1, 0] == pytest.approx(np.pi / 2 / 2.0)  # the joints kept in step


def test_rotation_and_translation_slow_down_together_within_both_speed_limits():
    clock = Clock()
    arm = ToyArm(spec=ur_servol_spec(), fps=125.0)
    config = no_watchdog(max_speed=0.25, max_angular_speed=1.0)
    move_and_turn = np.array([0.002, 0.0, 0.0, 0.0, 0.0, 0.008, 1.0])  # one step at each limit
    turn = np.array([0.0, 0.0, 0.0, 0.0, 0.008, 0.0, -1.0])
    with SafeRobot(arm, config, clock=clock) as robot:
        assert robot.config.period == pytest.approx(0.008)
        for _ in range(5):  # at the control rate: whole steps
            np.testing.assert_allclose(robot.command(move_and_turn), move_and_turn)
            clock.advance(0.008)
        for _ in range(20):  # at 1 kHz: an eighth of a step each, gripper untouched
            clock.advance(0.001)
            sent = robot.command(move_and_turn)
        np.testing.assert_allclose(sent, [0.00025, 0, 0, 0, 0, 0.001, 1.0])
        assert robot.last_result.reasons == (COMMAND_RATE,)
        clock.advance(0.001)
        np.testing.assert_allclose(robot.command(turn), [0, 0, 0, 0, 0.001, 0, -1.0])
        fast = filter_command(4 * move_and_turn, None, ur_servol_spec(), robot.config)
    np.testing.assert_allclose(fast.action_sent, np.r_[move_and_turn[:6], 1.0])  # bounds
    assert fast.travel_time == pytest.approx(0.008)


@FEW
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0.0, 0.0005, 0.001, 0.0125, 60.0]) | st.floats(0.0, 0.05),
            st.lists(sane, min_size=4, max_size=4),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_over_any_stretch_of_time_the_hand_is_sent_no_faster_than_the_speed_limit(commands):
    clock = Clock()
    arm = ToyArm(fps=80.0)
    speed, period = 0.4, 1 / 80
    times, sent = [], []
    with SafeRobot(arm, no_watchdog(max_speed=speed), clock=clock) as robot:
        for dt, action in commands:
            clock.advance(dt)
            times.append(clock.now)
            sent.append(robot.command(np.array(action)))
    t = np.array(times)
    moved = np.r_[0.0, np.cumsum(moved_m(sent))]
    for i in range(len(t)):
        # commands i..j together: the time from the first to the last, plus what was banked
        total = moved[i + 1 :] - moved[i]
        assert np.all(total <= speed * (t[i:] - t[i] + BANKED_PERIODS * period) * (1 + TOL))


# --------------------------------------------------------------------------- the simulated arm
def lead(times: np.ndarray, positions: np.ndarray, speed: float) -> float:
    """How far the arm got ahead of one moving steadily at `speed`: the most any two samples
    lie apart beyond `speed` x the time between them (0 for an arm that never went faster)."""
    worst = 0.0
    for i in range(len(times) - 1):
        apart = np.linalg.norm(positions[i + 1 :] - positions[i], axis=1)
        worst = max(worst, float((apart - speed * (times[i + 1 :] - times[i])).max()))
    return worst


def test_the_simulated_arm_keeps_to_its_speed_at_1khz_and_takes_full_steps_at_its_rate():
    """A burst of commands at 1 kHz, each asking for more than a full step, moves the
    simulated hand no faster than `max_speed`; the same burst at the arm's own 80 Hz moves it a
    full step per command, at `max_speed`.

    The simulated arm moves only when commanded, so its time is the time of its commands: the
    filter's clock is the stream of command instants (1 ms apart, then 12.5 ms apart), and each
    position the hand reached is paired with the instant of the command that moved it. That
    makes the run the same on any machine, however fast it steps MuJoCo."""
    clock = Clock()
    config = SafetyConfig.from_dict(SIM_SAFETY)
    speed = config.max_speed
    ask = np.array([-1.0, -1.0, 0.0, -1.0])  # the bounds on a diagonal: 1.41 cm a step
    runs = {}
    with SafeRobot(SimArm("metaworld/reach-v3"), config, clock=clock) as robot:
        period = robot.config.period
        for hz in (1000.0, 1.0 / period):
            robot.home(0)
            times, hand, sent = [clock.now], [robot.observe()["ee_pos"]], []
            for _ in range(round(0.3 * hz)):  # 0.3 s of commands
                clock.advance(1.0 / hz)
                sent.append(robot.command(ask))
                times.append(clock.now)
                hand.append(robot.observe()["ee_pos"])
            runs[hz] = np.array(times), np.array(hand), moved_m(sent)
    # Never faster than max_speed: the hand gets ahead of a steady max_speed by no more than
    # the step and a half a start may bank, give or take 2 mm of the hand trailing its target.
    banked, trail = speed * BANKED_PERIODS * period, 0.002
    times, hand, _ = runs[1000.0]
    assert np.linalg.norm(hand[-1] - hand[0]) > 0.25  # it did move, close to 0.3 m
    assert lead(times, hand, speed) <= banked + trail
    # At 80 Hz every command was a full step at max_speed, and the hand kept up with them.
    times, hand, steps = runs[1.0 / period]
    np.testing.assert_allclose(steps, speed * period)
    assert lead(times, hand, speed) <= banked + trail
    second_half = len(times) // 2
    travelled = np.linalg.norm(hand[-1] - hand[second_half])
    assert travelled / (times[-1] - times[second_half]) >= 0.95 * speed
