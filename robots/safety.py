"""The safety filter every command passes through on its way to an arm.

Record, deploy and replay only ever hold a `SafeRobot`: the driver they were given is wrapped
once and never handed back, so no code path can send an unchecked action. The checks
themselves are the pure function `filter_command` (no I/O, no clock), so they are tested
exhaustively with random actions and states, apart from the threads and devices around them.

What the filter does, in order, for each action convention (`ActionSpec.kind`):

* every convention: a NaN or infinite value anywhere replaces the whole action by the robot's
  hold action (a partly valid action is not trusted); otherwise each value is clipped to the
  spec bounds.
* "ee_delta" (dims 0-2 are the x, y, z displacement in length units "m", "cm" or "mm", the
  rest orientation/gripper): per-step limit on every dim (default: the spec bounds); speed
  limits: the translation and the rotation (the further dims in "rad" or "deg", a rotation
  increment such as a rotation vector) are scaled down together, direction kept, so
  |translation| <= `max_speed` (m/s) x time and |rotation| <= `max_angular_speed` (rad/s) x
  time; workspace: the next position, `ee_pos` (metres) plus the translation, is clamped per
  axis into the box. An axis already outside the box may move back toward it but never further
  out, so an arm that starts outside can always be brought back.
* "ee_absolute" (dims 0-2 are the target x, y, z in length units): the target is clamped into
  the box; an explicit `max_step` limits |target - ee_pos| per axis and `max_speed` limits the
  distance from `ee_pos` to the target (direction kept). Orientation and gripper dims get the
  bounds only: the observation does not give their current value.
* "joint_delta": per-step limit on every dim; speed limit on the dims in angular units ("rad",
  "deg"): scaled together, so the motion keeps its direction in joint space, until the fastest
  joint moves at `max_speed` rad/s.
* "joint_absolute": dim i is compared with `joint_pos[i]` (same units) for the first
  len(joint_pos) dims: an explicit `max_step` limits |target - joint_pos| and `max_speed`
  scales the angular part of (target - joint_pos) as for joint_delta. Further dims (a gripper)
  get the bounds only.
* The gripper (any dim that is neither a length nor an angle) is never slowed: scaling a grip
  effort or an opening down would loosen the grip, not slow an arm.
* A workspace box needs an end-effector convention: joint conventions would need forward
  kinematics, so `SafetyConfig.check` refuses the combination instead of ignoring the box.

Speeds are per second of wall-clock time, not per command. `filter_command` takes the
seconds of motion a command may use (`time_budget`, default one `period`); `SafeRobot` keeps
that budget from a monotonic clock: it grows with the time that passes, each command spends
what its motion takes at the speed limits, and it never holds more than `BANKED_PERIODS`
periods. So a caller that commands faster than the control rate gets proportionally smaller
steps (the arm keeps to its speed; the filter reports "command_rate"); one at the control rate
gets a full step every period, even when a step starts up to half a period early after a late
one; the first command after connecting gets a full step; and a pause banks at most 1.5
periods: after it, the arm moves one step and a half, not a burst. A single command never moves
more than `period` x the speed limits ("velocity"), whatever the budget. Over any stretch of
time T the arm is sent at most (T + 1.5 periods) x the speed limits.

A check that needs the arm's state ("ee_pos", "joint_pos") and does not find it, finite, in the
observation holds the arm: the filter never lets a command through unchecked. For "ee_delta" the
workspace check bounds "ee_setpoint" when the robot reports it: a position controller adds each
delta to its setpoint, which runs ahead of the hand, so bounding the hand alone would let the
setpoint (and then the hand) drift out of the box.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robots.base import ActionSpec, DriverError, Robot

__all__ = [
    "BANKED_PERIODS",
    "BOUNDS",
    "COMMAND_RATE",
    "ESTOP",
    "NON_FINITE",
    "NO_STATE",
    "STEP_LIMIT",
    "VELOCITY",
    "WATCHDOG",
    "WORKSPACE",
    "FilterResult",
    "SafeRobot",
    "SafetyConfig",
    "filter_command",
]

log = logging.getLogger(__name__)

# Why an action was changed or replaced; the keys of `SafeRobot.rejections`.
NON_FINITE = "non_finite"
BOUNDS = "bounds"
STEP_LIMIT = "step_limit"
VELOCITY = "velocity"
COMMAND_RATE = "command_rate"  # cut to the speed limits x the time since the previous command
WORKSPACE = "workspace"
NO_STATE = "no_state"
ESTOP = "estop"
WATCHDOG = "watchdog"

KINDS = ("ee_delta", "ee_absolute", "joint_delta", "joint_absolute")
BANKED_PERIODS = 1.5
"""The most motion time, in control periods, a pause can bank: one step, plus half a period so
that a loop at the control rate whose step comes early after a late one loses nothing."""
LENGTH_UNITS = {"m": 1.0, "cm": 0.01, "mm": 0.001}
ANGLE_UNITS = {"rad": 1.0, "deg": math.pi / 180.0}
STATE_KEYS = ("ee_pos", "ee_setpoint", "joint_pos")  # what the filter reads from an observation


def _vector(value: Any, name: str, size: int | None = None) -> tuple[float, ...]:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if size is not None and arr.shape != (size,):
        raise ValueError(f"safety config: {name} needs {size} values, got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"safety config: {name} must be finite, got {arr.tolist()}")
    return tuple(float(v) for v in arr)


@dataclass(frozen=True)
class SafetyConfig:
    """Limits for one arm. Every limit is optional; an unset one is not enforced.

    `workspace_low`/`workspace_high`: the box (x, y, z, metres, base frame) the end effector must
    stay in. `max_step`: the largest |value| per action dim (delta conventions) or the largest
    change from the current state per step (absolute conventions), in the action's units; one
    number for every dim or one per dim; unset, the spec bounds are the limit. `max_speed`:
    end-effector speed in m/s (ee conventions) or joint speed in rad/s (joint conventions), per
    second of wall-clock time however fast commands arrive. `max_angular_speed`: end-effector
    rotation speed in rad/s (ee_delta with rotation dims in "rad" or "deg"). `period`: the
    control period in seconds; a single command moves at most one period at the speed limits,
    a pause banks at most `BANKED_PERIODS` (1.5) periods of motion, and the watchdog counts in
    periods; unset, `SafeRobot` takes 1 / robot.fps. `watchdog_periods`: hold the arm when no
    command arrived for this many periods; None disables the watchdog.
    """

    workspace_low: tuple[float, ...] | None = None
    workspace_high: tuple[float, ...] | None = None
    max_step: float | tuple[float, ...] | None = None
    max_speed: float | None = None
    period: float | None = None
    watchdog_periods: int | None = 5
    max_angular_speed: float | None = None

    def __post_init__(self) -> None:
        if (self.workspace_low is None) != (self.workspace_high is None):
            raise ValueError("safety config: give both workspace_low and workspace_high, or none")
        if self.workspace_low is not None:
            low = _vector(self.workspace_low, "workspace_low", 3)
            high = _vector(self.workspace_high, "workspace_high", 3)
            if any(lo > hi for lo, hi in zip(low, high, strict=True)):
                raise ValueError(
                    f"safety config: workspace_low {low} exceeds workspace_high {high}"
                )
            object.__setattr__(self, "workspace_low", low)
            object.__setattr__(self, "workspace_high", high)
        if self.max_step is not None:
            step = _vector(self.max_step, "max_step")
            if not step or min(step) < 0:
                raise ValueError(f"safety config: max_step must be >= 0, got {list(step)}")
            object.__setattr__(self, "max_step", step[0] if np.ndim(self.max_step) == 0 else step)
        for name in ("max_speed", "max_angular_speed", "period"):
            value = getattr(self, name)
            if value is not None:
                if not (math.isfinite(float(value)) and float(value) > 0):
                    raise ValueError(
                        f"safety config: {name} must be a positive number, got {value}"
                    )
                object.__setattr__(self, name, float(value))
        if self.watchdog_periods is not None:
            k = self.watchdog_periods
            if isinstance(k, bool) or int(k) != k or k < 1:
                raise ValueError(
                    f"safety config: watchdog_periods must be a whole number >= 1 (or null to "
                    f"disable the watchdog), got {k}"
                )
            object.__setattr__(self, "watchdog_periods", int(k))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> SafetyConfig:
        """A config from a parsed YAML/JSON mapping; an unknown key is an error, not ignored,
        so a misspelt limit can never silently go unenforced."""
        values = dict(values or {})
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ValueError(
                f"safety config: unknown key(s) {', '.join(unknown)}; "
                f"valid keys: {', '.join(valid)}"
            )
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> SafetyConfig:
        """A config from a YAML file such as configs/robots/safety.yaml."""
        import yaml  # only this loader needs it

        with open(path) as f:
            values = yaml.safe_load(f)
        if values is not None and not isinstance(values, Mapping):
            raise ValueError(f"safety config {path}: expected a mapping of keys, got {values!r}")
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, stored with every recording so the limits in force are known."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def check(self, spec: ActionSpec) -> None:
        """Raise ValueError if these limits cannot be enforced on `spec` (one line saying
        why and what to change); `SafeRobot` calls it once, before the first command."""
        _plan(spec, self)


@dataclass(frozen=True)
class _Plan:
    """What `filter_command` needs from (spec, config), validated."""

    step: np.ndarray | None  # per-dim limit, (dim,)
    length_scale: np.ndarray | None  # metres per unit of dims 0-2 (ee conventions)
    angle_scale: np.ndarray | None  # rad per unit, 0 for non-angular dims (joint conventions)
    rotation_scale: np.ndarray | None = None  # rad per unit, 0 off the rotation dims (ee_delta)


def _plan(spec: ActionSpec, config: SafetyConfig) -> _Plan:
    kind = spec.kind
    if kind not in KINDS:
        raise ValueError(f"safety filter: unknown action kind {kind!r}; expected one of {KINDS}")
    step = None
    if config.max_step is not None:
        step = np.asarray(config.max_step, dtype=np.float64).reshape(-1)
        if step.size == 1:
            step = np.full(spec.dim, step[0])
        elif step.shape != (spec.dim,):
            raise ValueError(
                f"safety config: max_step has {step.size} values but the action has {spec.dim} "
                f"dims {spec.names}; give one number or one per dim"
            )
    for name in ("max_speed", "max_angular_speed"):
        if getattr(config, name) is not None and config.period is None:
            raise ValueError(f"safety config: {name} needs period (seconds per control step)")
    length_scale = angle_scale = rotation_scale = None
    units = spec.units or ("",) * spec.dim
    if config.max_angular_speed is not None:
        if kind != "ee_delta":
            raise ValueError(
                f"safety config: max_angular_speed limits end-effector rotation increments "
                f"(ee_delta); this robot takes {kind}: remove it"
                + (" (max_speed is the joint speed)" if kind.startswith("joint") else "")
            )
        if not any(u in ANGLE_UNITS for u in units[3:]):
            raise ValueError(
                f"safety config: max_angular_speed needs rotation dims in rad or deg; dims "
                f"{spec.names[3:]} have units {units[3:]}: remove it"
            )
    if kind.startswith("ee"):
        if spec.dim < 3:
            raise ValueError(f"safety filter: {kind} needs x, y, z as dims 0-2, got {spec.names}")
        xyz = units[:3]
        needs_length = config.workspace_low is not None or config.max_speed is not None
        if needs_length and any(u not in LENGTH_UNITS for u in xyz):
            raise ValueError(
                f"safety filter: dims {spec.names[:3]} have units {xyz}; the workspace and "
                f"speed limits need lengths ({', '.join(LENGTH_UNITS)})"
            )
        length_scale = np.array([LENGTH_UNITS.get(u, 1.0) for u in xyz])
        if kind == "ee_delta":
            rotation_scale = np.array([0.0] * 3 + [ANGLE_UNITS.get(u, 0.0) for u in units[3:]])
        if kind == "ee_delta" and (np.any(spec.low[:3] > 0) or np.any(spec.high[:3] < 0)):
            raise ValueError(
                f"safety filter: ee_delta bounds of {spec.names[:3]} must include 0 (no motion), "
                f"got low {spec.low[:3]} high {spec.high[:3]}"
            )
    else:
        if config.workspace_low is not None:
            raise ValueError(
                f"safety config: a workspace box needs an end-effector action convention; this "
                f"robot takes {kind}: remove workspace_low/high or use an ee_* driver"
            )
        angle_scale = np.array([ANGLE_UNITS.get(u, 0.0) for u in units])
    return _Plan(step, length_scale, angle_scale, rotation_scale)


@dataclass(frozen=True)
class FilterResult:
    """The action to send and why it differs from the one asked for.

    `reasons` lists the checks that changed it (constants of this module); `held` says it was
    replaced by the hold action rather than adjusted; `travel_time` is how long its motion takes
    at the speed limits (seconds, 0 without them): what `SafeRobot` spends of the time that has
    passed since the previous command."""

    action_sent: np.ndarray
    reasons: tuple[str, ...] = ()
    held: bool = False
    travel_time: float = 0.0


def _held(hold: np.ndarray | None, spec: ActionSpec, *reasons: str) -> FilterResult:
    delta = spec.kind.endswith("delta")
    if hold is None:
        if not delta:
            raise ValueError(
                "filter_command: pass hold= (the robot's hold action) for absolute conventions"
            )
        hold = np.zeros(spec.dim)
    h = np.asarray(hold, dtype=np.float64).reshape(-1)
    if h.shape != (spec.dim,) or not np.all(np.isfinite(h)):
        if not delta:
            raise DriverError(
                f"the robot's hold action {h.tolist()} is not {spec.dim} finite values; fix the "
                "driver's hold()"
            )
        h = np.zeros(spec.dim)
    return FilterResult(np.clip(h, spec.low, spec.high), tuple(reasons), True)


def _state(state: Mapping[str, Any] | None, key: str, size: int) -> np.ndarray | None:
    """`state[key]` as `size` or more finite floats, or None when it cannot be trusted."""
    if state is None or key not in state:
        return None
    try:
        v = np.asarray(state[key], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    if v.size < size or not np.all(np.isfinite(v)):
        return None
    return v


def _ee_delta_time(a: np.ndarray, plan: _Plan, config: SafetyConfig) -> float:
    """Seconds the ee_delta motion `a` takes at the speed limits (0 with none set)."""
    need = 0.0
    if config.max_speed is not None:
        need = float(np.linalg.norm(a[:3] * plan.length_scale)) / config.max_speed
    if config.max_angular_speed is not None:
        turn = float(np.linalg.norm(a * plan.rotation_scale))
        need = max(need, turn / config.max_angular_speed)
    return need


def _joint_time(motion: np.ndarray, angle_scale: np.ndarray, config: SafetyConfig) -> float:
    """Seconds the joint motion takes with its fastest joint at `max_speed` (0 when unset)."""
    if config.max_speed is None:
        return 0.0
    fastest = float(np.max(np.abs(motion) * angle_scale, initial=0.0))
    return fastest / config.max_speed


def _speed_factor(
    need: float, config: SafetyConfig, time_budget: float | None, reasons: list[str]
) -> float:
    """How much to shrink a motion that takes `need` seconds at the speed limits so that it
    fits one period and the time budget (1.0: it fits), noting which of the two it broke."""
    period = float(config.period)  # set: `_plan` refuses speed limits without one
    allowed = period if time_budget is None else min(period, max(float(time_budget), 0.0))
    if need <= allowed:
        return 1.0
    if need > period:
        reasons.append(VELOCITY)
    if allowed < min(need, period):
        reasons.append(COMMAND_RATE)
    # A hair under the limit, so float rounding never leaves the result just above it.
    return allowed / need * (1.0 - 1e-12)


def filter_command(
    action: np.ndarray,
    state: Mapping[str, Any] | None,
    spec: ActionSpec,
    config: SafetyConfig,
    hold: np.ndarray | None = None,
    time_budget: float | None = None,
) -> FilterResult:
    """The action that is safe to send for `action`, given the arm's latest observation.

    Pure: the same inputs always give the same output, so it can be tested exhaustively.
    `state` is an observation ("ee_pos" in metres, "joint_pos" in the action's units); `hold`
    is the robot's hold action (delta conventions default to zeros); `time_budget` is how many
    seconds of motion at the speed limits this command may use (`SafeRobot` passes the time
    since the previous command, see the module docstring; None: one period). The module
    docstring says what is checked for each convention. Raises ValueError for an action of the
    wrong shape or limits that do not fit the spec: those are programming errors, not unsafe
    values.
    """
    plan = _plan(spec, config)
    try:
        a = np.array(action, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise ValueError(f"filter_command: action is not numeric: {e}") from e
    if a.shape != (spec.dim,):
        raise ValueError(
            f"filter_command: action has {a.size} values, the robot takes {spec.dim} {spec.names}"
        )
    if not np.all(np.isfinite(a)):
        return _held(hold, spec, NON_FINITE)
    reasons: list[str] = []

    def note(new: np.ndarray, old: np.ndarray, reason: str) -> np.ndarray:
        if not np.array_equal(new, old) and reason not in reasons:
            reasons.append(reason)
        return new

    a = note(np.clip(a, spec.low, spec.high), a, BOUNDS)
    kind = spec.kind
    if kind.endswith("delta") and plan.step is not None:
        a = note(np.clip(a, -plan.step, plan.step), a, STEP_LIMIT)
    p = q = None  # the measured position the motion of an absolute target starts from

    if kind == "ee_delta":
        scale = plan.length_scale
        need = _ee_delta_time(a, plan, config)
        if need > 0:
            factor = _speed_factor(need, config, time_budget, reasons)
            if factor < 1.0:
                # Translation and rotation shrink together: the hand keeps its path.
                moving = plan.rotation_scale > 0
                moving[:3] = True
                a[moving] *= factor
        t = a[:3] * scale  # metres
        if config.workspace_low is not None:
            # Deltas add to the controller's setpoint, which runs ahead of a lagging hand: bound
            # the setpoint when the robot reports one, else the measured position.
            p = _state(state, "ee_setpoint", 3)
            p = _state(state, "ee_pos", 3) if p is None else p
            if p is None:
                return _held(hold, spec, *reasons, NO_STATE)
            p = p[:3]
            # An axis outside the box may move back toward it but not further away.
            lo = np.minimum(config.workspace_low, p)
            hi = np.maximum(config.workspace_high, p)
            nxt = np.clip(p + t, lo, hi)
            clamped = nxt != p + t
            if clamped.any():
                # Only the clamped axes change, and each only shrinks toward 0 (the clip to
                # [min(0, a), max(0, a)] absorbs float rounding in the unit conversion).
                old = a[:3].copy()
                shrunk = np.clip((nxt - p) / scale, np.minimum(old, 0), np.maximum(old, 0))
                a[:3] = np.where(clamped, shrunk, old)
                reasons.append(WORKSPACE)

    elif kind == "ee_absolute":
        scale = plan.length_scale
        target = a[:3] * scale
        changed = False
        if config.workspace_low is not None:
            inside = np.clip(target, config.workspace_low, config.workspace_high)
            if not np.array_equal(inside, target):
                target, changed = inside, True
                reasons.append(WORKSPACE)
        if config.max_step is not None or config.max_speed is not None:
            p = _state(state, "ee_pos", 3)
            if p is None:
                return _held(hold, spec, *reasons, NO_STATE)
            p = p[:3]
            if plan.step is not None:
                lim = plan.step[:3] * scale
                near = np.clip(target, p - lim, p + lim)
                if not np.array_equal(near, target):
                    target, changed = near, True
                    reasons.append(STEP_LIMIT)
            if config.max_speed is not None:
                d = target - p
                need = float(np.linalg.norm(d)) / config.max_speed
                factor = _speed_factor(need, config, time_budget, reasons)
                if factor < 1.0:
                    target, changed = p + d * factor, True
        if changed:
            a[:3] = target / scale

    elif kind == "joint_delta":
        need = _joint_time(a, plan.angle_scale, config)
        if need > 0:
            factor = _speed_factor(need, config, time_budget, reasons)
            if factor < 1.0:
                a[plan.angle_scale > 0] *= factor

    else:  # joint_absolute
        if config.max_step is not None or config.max_speed is not None:
            q = _state(state, "joint_pos", 1)
            if q is None:
                return _held(hold, spec, *reasons, NO_STATE)
            n = min(q.size, spec.dim)
            q = q[:n]
            if plan.step is not None:
                near = np.clip(a[:n], q - plan.step[:n], q + plan.step[:n])
                a[:n] = note(near, a[:n], STEP_LIMIT)
            need = _joint_time(a[:n] - q, plan.angle_scale[:n], config)
            if need > 0:
                factor = _speed_factor(need, config, time_budget, reasons)
                if factor < 1.0:
                    angular = plan.angle_scale[:n] > 0
                    a[:n][angular] = q[angular] + (a[:n][angular] - q[angular]) * factor

    # Only bites when the current state itself lies outside the bounds (absolute conventions)
    # or on a dim whose bounds exclude 0: the command the robot accepts wins.
    a = note(np.clip(a, spec.low, spec.high), a, BOUNDS)
    return FilterResult(a, tuple(reasons), False, _travel_time(a, kind, plan, config, p, q))


def _travel_time(
    a: np.ndarray,
    kind: str,
    plan: _Plan,
    config: SafetyConfig,
    p: np.ndarray | None,
    q: np.ndarray | None,
) -> float:
    """Seconds the action to be sent takes at the speed limits: what it spends of the budget.
    Measured on the final action, so a workspace clamp that shortened it spends less."""
    if kind == "ee_delta":
        return _ee_delta_time(a, plan, config)
    if kind == "ee_absolute":
        if config.max_speed is None or p is None:
            return 0.0
        return float(np.linalg.norm(a[:3] * plan.length_scale - p)) / config.max_speed
    if kind == "joint_delta":
        return _joint_time(a, plan.angle_scale, config)
    if q is None:
        return 0.0
    n = q.size
    return _joint_time(a[:n] - q, plan.angle_scale[:n], config)


def _state_copy(obs: Mapping[str, Any]) -> dict[str, Any]:
    """The state the filter reads, copied: a caller editing its observation in place (say,
    subtracting an offset) must not change what the filter believes."""
    return {k: np.array(obs[k], dtype=np.float64) for k in STATE_KEYS if k in obs}


class SafeRobot(Robot):
    """A `Robot` whose every command goes through `filter_command`, with an emergency stop and
    a watchdog. Callers get this and never the driver, so nothing can bypass the filter.

    The filter uses the latest observation: `observe()` keeps it, and a command that arrives
    with no observation taken since the previous command makes the filter observe first (the
    arm only moves on commands, so an observation taken after the last one is current).
    `estop()` latches: every command is replaced by hold until `reset_estop()`. The watchdog, a
    daemon thread started on connect (or the first command), sends hold every period once no
    command arrived for `watchdog_periods` periods, counting one trip per stall; the next
    command resumes normal operation. It arms at the first command, so a session that only
    observes is left alone. One lock serializes every call into the driver. The driver's
    `hold()` is asked on every command, so the replacement for a rejected command always
    reflects the current state.

    The speed limits hold per second of `clock` time (monotonic seconds; a test may pass a
    clock it drives): each command may move for the time since the previous one plus what that
    one left unused, banked up to `BANKED_PERIODS` periods (the module docstring says why). The
    budget starts full on connect, so the first command moves a full step.
    """

    def __init__(
        self,
        robot: Robot,
        config: SafetyConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(robot, SafeRobot):
            raise ValueError("SafeRobot: this robot is already wrapped; pass it as it is")
        config = config or SafetyConfig()
        if config.period is None and robot.fps > 0:
            config = dataclasses.replace(config, period=1.0 / robot.fps)
        if config.watchdog_periods is not None and config.period is None:
            raise ValueError(
                f"SafeRobot: robot {robot.name} has no fps, so the watchdog needs period (s) in "
                "the safety config, or watchdog_periods: null to disable it"
            )
        config.check(robot.action_spec)
        self._robot = robot
        self._config = config
        self.name = robot.name
        self._lock = threading.RLock()
        self._latest: dict[str, Any] | None = None
        self._fresh = False
        self._estopped = False
        self._rejections: Counter[str] = Counter()
        self._commands = 0
        self._last_result: FilterResult | None = None
        self._last_command: float | None = None  # monotonic; None until the first command
        self._clock = clock
        self._budget = 0.0  # seconds of motion at the speed limits the next command may use
        self._budget_at: float | None = None  # clock time of `_budget`; None: full (a start)
        self._rate_warned = False
        self._stalled = False
        self._watchdog_trips = 0
        self._watchdog_holds = 0
        self._watchdog_error: BaseException | None = None
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None

    # ------------------------------------------------------------------ delegation
    @property
    def config(self) -> SafetyConfig:
        """The limits in force (period resolved from the robot's fps)."""
        return self._config

    @property
    def action_spec(self) -> ActionSpec:
        return self._robot.action_spec

    @property
    def observation_shapes(self) -> dict[str, tuple[int, ...]]:
        return self._robot.observation_shapes

    @property
    def fps(self) -> float:
        return self._robot.fps

    @property
    def is_connected(self) -> bool:
        return self._robot.is_connected

    def identity(self) -> dict[str, Any]:
        """The driver's identity plus the safety limits, stored with every recording."""
        return {**self._robot.identity(), "safety": self._config.to_dict()}

    def hold(self) -> np.ndarray:
        with self._lock:
            return self._robot.hold()

    def home(self, seed: int | None = None) -> int | None:
        """Prepare a new episode (see `Robot.home`); the filter's cached observation is from
        before, so the next command observes afresh."""
        with self._lock:
            self._fresh = False
            return self._robot.home(seed)

    def connect(self) -> None:
        with self._lock:
            self._robot.connect()
        self._start_watchdog()

    def disconnect(self) -> None:
        """Stop the watchdog, then disconnect the driver (which leaves the arm holding)."""
        self._stop.set()
        thread, self._watchdog = self._watchdog, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        with self._lock:
            self._robot.disconnect()
            self._last_command = None
            self._stalled = False
            self._budget_at = None

    def __enter__(self) -> SafeRobot:
        self.connect()
        return self

    # ------------------------------------------------------------------ the filtered path
    def observe(self) -> dict[str, Any]:
        with self._lock:
            obs = self._robot.observe()
            self._latest, self._fresh = _state_copy(obs), True
        return obs

    def command(self, action: np.ndarray) -> np.ndarray:
        """Filter `action` (see `filter_command`) and send it; returns what the driver sent."""
        self._start_watchdog()
        with self._lock:
            self._last_command = time.monotonic()
            self._stalled = False
            self._commands += 1
            hold = self._robot.hold()
            if self._estopped:
                result = _held(hold, self.action_spec, ESTOP)
            else:
                if not self._fresh:
                    self._latest = _state_copy(self._robot.observe())
                result = filter_command(
                    action,
                    self._latest,
                    self.action_spec,
                    self._config,
                    hold,
                    time_budget=self._take_budget(),
                )
                self._budget = max(0.0, self._budget - result.travel_time)
            self._fresh = False
            self._rejections.update(result.reasons)
            self._last_result = result
            if COMMAND_RATE in result.reasons and not self._rate_warned:
                self._rate_warned = True
                log.warning(
                    "%s: commands arrive faster than its control rate (%.4g Hz); each moves only "
                    "as far as the speed limits allow in the time since the previous one",
                    self.name,
                    1.0 / self._config.period,
                )
            return self._robot.command(result.action_sent)

    def _take_budget(self) -> float | None:
        """The seconds of motion this command may use: what the previous one left plus the
        time since, banked up to `BANKED_PERIODS` periods (full at the first command). None
        without a period."""
        period = self._config.period
        if period is None:
            return None
        now = self._clock()
        most = BANKED_PERIODS * period
        if self._budget_at is None:
            self._budget = most
        else:
            self._budget = min(most, self._budget + max(0.0, now - self._budget_at))
        self._budget_at = now
        return self._budget

    @property
    def last_result(self) -> FilterResult | None:
        """What the filter did to the latest command (None before the first)."""
        return self._last_result

    # ------------------------------------------------------------------ emergency stop
    def estop(self) -> None:
        """Latch the emergency stop and hold the arm now; commands are held until
        `reset_estop()`, whatever they ask for."""
        with self._lock:
            self._estopped = True
            if self._robot.is_connected:
                self._robot.command(self._robot.hold())

    def reset_estop(self) -> None:
        """Clear a latched emergency stop: an operator's decision, never automatic."""
        with self._lock:
            self._estopped = False

    @property
    def estopped(self) -> bool:
        return self._estopped

    # ------------------------------------------------------------------ watchdog
    @property
    def watchdog_trips(self) -> int:
        """Stalls detected: each counts once, however many holds it took."""
        return self._watchdog_trips

    @property
    def stalled(self) -> bool:
        """True while the watchdog is holding the arm for a silent caller."""
        return self._stalled

    def _start_watchdog(self) -> None:
        if self._config.watchdog_periods is None:
            return
        with self._lock:
            if self._watchdog is not None and self._watchdog.is_alive():
                return
            if not self._robot.is_connected:
                return
            self._stop.clear()
            self._watchdog = threading.Thread(
                target=self._watch, name=f"watchdog-{self.name}", daemon=True
            )
            self._watchdog.start()

    def _watch(self) -> None:
        period = self._config.period
        window = self._config.watchdog_periods * period
        while True:
            with self._lock:
                last, stalled = self._last_command, self._stalled
            if last is None or stalled:
                timeout = period
            else:
                timeout = max(0.0, last + window - time.monotonic())
            if self._stop.wait(timeout):
                return
            with self._lock:
                last = self._last_command
                if last is None or time.monotonic() - last < window:
                    continue
                if not self._robot.is_connected:
                    continue
                try:
                    self._robot.command(self._robot.hold())
                except Exception as e:  # the thread must live on to hold at the next period
                    if self._watchdog_error is None:
                        log.warning("watchdog of %s could not hold the arm: %s", self.name, e)
                    self._watchdog_error = e
                    continue
                self._watchdog_holds += 1
                if not self._stalled:
                    self._stalled = True
                    self._watchdog_trips += 1
                    self._rejections[WATCHDOG] += 1

    # ------------------------------------------------------------------ reporting
    @property
    def rejections(self) -> dict[str, int]:
        """How many commands each check changed or replaced, by reason."""
        with self._lock:
            return dict(self._rejections)

    def stats(self) -> dict[str, Any]:
        """Counters for a session summary."""
        with self._lock:
            return {
                "commands": self._commands,
                "rejections": dict(self._rejections),
                "watchdog_trips": self._watchdog_trips,
                "watchdog_holds": self._watchdog_holds,
                "watchdog_error": None
                if self._watchdog_error is None
                else str(self._watchdog_error),
                "estopped": self._estopped,
            }
