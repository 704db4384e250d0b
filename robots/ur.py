"""Universal Robots arms (e-Series and CB3) through ur_rtde, Universal Robots' RTDE interface
as SDU Robotics' library speaks it.

ur_rtde uploads a control script to the controller and streams commands to it through RTDE
registers; state comes back through a second RTDE connection at the controller's rate. This
driver adds what a recording or a deployed policy needs on top of that:

* one action convention per control mode: "servoL" takes end-effector deltas added to a
  setpoint the driver keeps (so the commanded pose never drifts with the arm's tracking lag),
  "servoJ" takes absolute joint targets;
* stops are seen, not guessed: a protective stop or an emergency stop shows in `observe()`
  ("safety_mode", `safety_status`) and `command()` refuses with a one-line `DriverError` that
  says how to clear it, instead of sending into a stopped controller;
* a controller that goes away raises `ConnectionLost` within `stale_after` seconds, whether the
  socket closes (power loss, controller restart) or just falls silent (cable pulled);
* ur_rtde runs in a process of its own (`robots.vendor_process`), reached through a pipe in
  one round trip per read or command (`RTDELink`): ur_rtde's C++ threads can crash on a
  connection that goes away (a segmentation fault, an abort from a destructor), and that now
  ends its process, not the session. The driver raises `DriverCrashed`, a `ConnectionLost`
  naming the signal, and the session ends with one line and a whole store;
* the gripper dimension drives the tool's digital output 0 (a gripper wired to it closes at
  > 0), sent as a URScript secondary program on port 30002 when it changes. ur_rtde's own
  RTDEIOInterface is not used for this: once the controller is gone, destroying it throws from
  a C++ destructor and aborts the process it runs in.

`robots.emulators.ur_controller` emulates the controller on a loopback address, so all of this
runs, through ur_rtde, without an arm (tests/test_ur.py, docs/hardware/ur.md).
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import time
from typing import Any

import numpy as np

from robots.base import (
    ActionSpec,
    ConnectionLost,
    DriverCrashed,
    DriverError,
    Robot,
    vendor_library,
)
from robots.gripper import GripperGeometry
from robots.rotations import matrix_from_rotvec, rotvec_from_matrix
from robots.vendor_process import VendorHost, host_vendor

__all__ = ["CONTROL_MODES", "ROBOT_MODES", "SAFETY_MODES", "RTDELink", "URArm"]

log = logging.getLogger(__name__)

CONTROL_MODES = ("servoL", "servoJ")
SECONDARY_PORT = 30002
ROBOT_MODES = {
    -1: "NO_CONTROLLER",
    0: "DISCONNECTED",
    1: "CONFIRM_SAFETY",
    2: "BOOTING",
    3: "POWER_OFF",
    4: "POWER_ON",
    5: "IDLE",
    6: "BACKDRIVE",
    7: "RUNNING",
    8: "UPDATING_FIRMWARE",
}
SAFETY_MODES = {
    1: "NORMAL",
    2: "REDUCED",
    3: "PROTECTIVE_STOP",
    4: "RECOVERY",
    5: "SAFEGUARD_STOP",
    6: "SYSTEM_EMERGENCY_STOP",
    7: "ROBOT_EMERGENCY_STOP",
    8: "VIOLATION",
    9: "FAULT",
    10: "VALIDATE_JOINT_ID",
    11: "UNDEFINED_SAFETY_MODE",
    12: "AUTOMATIC_MODE_SAFEGUARD_STOP",
    13: "SYSTEM_THREE_POSITION_ENABLING_STOP",
}
RUNNING = 7
MOVABLE_SAFETY = (1, 2)  # NORMAL, REDUCED: the arm accepts motion
JOINT_RANGE = 2 * math.pi  # UR joints turn ±360°


class URArm(Robot):
    """A UR arm at `host`, commanded at `hz` through ur_rtde.

    Control modes (`control`):

    * "servoL" (default): action kind "ee_delta", 7 numbers: x, y, z displacement (m) and
      roll, pitch, yaw rotation-vector increment (rad), base frame, plus the gripper in [-1, 1].
      Each delta is added to the driver's setpoint (reported as "ee_setpoint"), which is sent
      with servoL. Per-step bounds are `max_tcp_speed / hz` (m) and `max_tcp_rot_speed / hz`.
    * "servoJ": action kind "joint_absolute", 7 numbers: the six joint targets (rad) and the
      gripper.

    `lookahead_time` (0.03-0.2 s) and `gain` (100-2000) shape servoj's tracking: a longer
    lookahead smooths, a higher gain stiffens. `rtde_frequency` is the RTDE state rate (None:
    ur_rtde's default, 500 Hz on e-Series, 125 Hz on CB3). `upper_range_registers` moves
    ur_rtde's command registers from 0-23 to 24-47, for cells whose fieldbus (EtherNet/IP,
    PROFINET, MODBUS) already uses the lower ones. `gripper`: "tool_do0" drives tool
    digital output 0 from the gripper dim; None records the dim without driving anything.
    `stale_after`: seconds without a new controller state before the link counts as lost.
    `isolate`: run ur_rtde in a process of its own (default), so a crash in it is a
    `DriverCrashed` rather than the end of the process; `answer_within`: seconds that process
    may take to answer a read or a command before it counts as hung (and is ended).
    `gripper_geometry`: the gripper's size for its motion-track points (`robots.gripper`).

    Observation: "joint_pos", "joint_vel" (6, rad, rad/s), "ee_pos" (3, m, base frame),
    "ee_rot" (3, rotation vector), "ee_setpoint" (3, m: servoL the driver's setpoint, servoJ
    the controller's target TCP), "tcp_force" (6, N and Nm), "gripper" (1, last command),
    "robot_mode" and "safety_mode" (1, the controller's codes: 7 RUNNING; 1 NORMAL,
    3 PROTECTIVE_STOP, 6/7 emergency stops), "gripper_points" (5, 3: the gripper's
    motion-track points in the base frame, from the TCP pose and `gripper_geometry`),
    "timestamp" (wall clock at the read).
    """

    def __init__(
        self,
        host: str,
        *,
        control: str = "servoL",
        hz: float = 125.0,
        lookahead_time: float = 0.1,
        gain: float = 300.0,
        max_tcp_speed: float = 0.25,
        max_tcp_rot_speed: float = 1.0,
        gripper: str | None = "tool_do0",
        rtde_frequency: float | None = None,
        upper_range_registers: bool = False,
        stale_after: float = 0.5,
        connect_timeout: float = 10.0,
        isolate: bool = True,
        answer_within: float = 1.0,
        gripper_geometry: dict[str, float] | None = None,
    ) -> None:
        if not host:
            raise DriverError("UR arm: give the controller's address, e.g. ur:192.168.1.10")
        if control not in CONTROL_MODES:
            raise DriverError(
                f"UR arm: unknown control mode {control!r}; use one of {', '.join(CONTROL_MODES)}"
            )
        if not 0 < hz <= 500:
            raise DriverError(f"UR arm: hz must be in (0, 500], got {hz}")
        if not 0.03 <= lookahead_time <= 0.2:
            raise DriverError(
                f"UR arm: lookahead_time must be in [0.03, 0.2] s, got {lookahead_time}"
            )
        if not 100 <= gain <= 2000:
            raise DriverError(f"UR arm: gain must be in [100, 2000], got {gain}")
        if not (0 < max_tcp_speed <= 1.0 and 0 < max_tcp_rot_speed <= 3.0):
            raise DriverError(
                "UR arm: max_tcp_speed must be in (0, 1] m/s and max_tcp_rot_speed in (0, 3] rad/s"
            )
        if not 0 < answer_within <= 60:
            raise DriverError(f"UR arm: answer_within must be in (0, 60] s, got {answer_within}")
        if gripper not in ("tool_do0", None):
            raise DriverError(f"UR arm: gripper must be 'tool_do0' or null, got {gripper!r}")
        self.host = host
        self.name = f"ur:{host}"
        self.control = control
        self.hz = float(hz)
        self.lookahead_time = float(lookahead_time)
        self.gain = float(gain)
        self.gripper_output = gripper
        self.rtde_frequency = rtde_frequency
        self.upper_range_registers = bool(upper_range_registers)
        self.stale_after = float(stale_after)
        self.connect_timeout = float(connect_timeout)
        self.isolate = bool(isolate)
        self.answer_within = float(answer_within)
        try:
            self.gripper_geometry = GripperGeometry.from_options(gripper_geometry)
        except ValueError as e:
            raise DriverError(f"UR arm: {e}") from None
        self._link: VendorHost | None = None
        self._identity: dict[str, Any] = {}
        self._lost: ConnectionLost | None = None
        self._last_stamp = -1.0
        self._last_change = 0.0
        self._gripper = -1.0
        self._tool_out: bool | None = None
        self._sp_pos = np.zeros(3)
        self._sp_rot = np.eye(3)
        step, rot = max_tcp_speed / self.hz, max_tcp_rot_speed / self.hz
        if control == "servoL":
            self._spec = ActionSpec(
                kind="ee_delta",
                names=("x", "y", "z", "roll", "pitch", "yaw", "gripper"),
                units=("m", "m", "m", "rad", "rad", "rad", "1"),
                low=np.array([-step] * 3 + [-rot] * 3 + [-1.0]),
                high=np.array([step] * 3 + [rot] * 3 + [1.0]),
                frame="base",
            )
        else:
            self._spec = ActionSpec(
                kind="joint_absolute",
                names=("base", "shoulder", "elbow", "wrist1", "wrist2", "wrist3", "gripper"),
                units=("rad",) * 6 + ("1",),
                low=np.array([-JOINT_RANGE] * 6 + [-1.0]),
                high=np.array([JOINT_RANGE] * 6 + [1.0]),
                frame="joint",
            )

    # --- Robot -----------------------------------------------------------------------------------
    @property
    def action_spec(self) -> ActionSpec:
        return self._spec

    @property
    def observation_shapes(self) -> dict[str, tuple[int, ...]]:
        return {
            "joint_pos": (6,),
            "joint_vel": (6,),
            "ee_pos": (3,),
            "ee_rot": (3,),
            "ee_setpoint": (3,),
            "tcp_force": (6,),
            "gripper": (1,),
            "gripper_points": (5, 3),
            "robot_mode": (1,),
            "safety_mode": (1,),
        }

    @property
    def fps(self) -> float:
        return self.hz

    @property
    def is_connected(self) -> bool:
        """Connected and not known to be lost."""
        return self._link is not None and self._lost is None

    @property
    def vendor_pid(self) -> int | None:
        """The process ur_rtde runs in (this one's with `isolate=False`); None when not
        connected."""
        return self._link.pid if self._link is not None else None

    def connect(self) -> None:
        """Start ur_rtde's process, reach the dashboard, then RTDE, then upload ur_rtde's
        control script. The arm's modes are checked before the script goes up, so a stopped or
        unpowered arm is reported as such rather than as ur_rtde's timeout waiting for the
        script."""
        if self._link is not None:
            return
        self._lost = None
        where = f"UR controller at {self.host}"
        slow = self.connect_timeout + 20.0  # ur_rtde's own timeouts end these calls first
        self._link = host_vendor(
            "robots.ur:RTDELink",
            device=self.name,
            library="ur_rtde",
            isolate=self.isolate,
            answer_within=self.answer_within,
            host=self.host,
        )
        try:
            try:
                self._call("open_dashboard", int(self.connect_timeout * 1000), within=slow)
            except RuntimeError as e:
                if isinstance(e, DriverError):
                    raise
                raise DriverError(
                    f"cannot reach the {where} ({_one_line(e)}): check the cable, the address "
                    "(ping it) and that the controller has booted"
                ) from None
            self._identity = self._call("identity", within=slow)
            freq = -1.0 if self.rtde_frequency is None else float(self.rtde_frequency)
            upper = self.upper_range_registers
            self._call("open_receive", freq, upper, within=slow)
            self._wait_state()
            self._check_ready(self._state(), action="connect")
            self._call("open_control", freq, upper, within=slow)
        except DriverError:
            self._close_link()
            raise
        except RuntimeError as e:  # ur_rtde's own errors, e.g. remote control off
            self._close_link()
            message = _one_line(e)
            if "remote control" in message:
                raise DriverError(
                    f"{where} is in local control: switch it to Remote Control on the pendant "
                    "(top-right icon; enable Remote Control in Settings > System first)"
                ) from None
            raise DriverError(f"{where}: {message}") from None
        self._last_change = time.monotonic()
        self._reset_setpoint()
        if self.gripper_output is not None:
            self._tool_out = None  # unknown until the first command sets it

    def disconnect(self) -> None:
        """Stop servoing, end the control script, close every connection and ur_rtde's
        process. Safe twice, after the controller went away and after ur_rtde crashed (nothing
        is sent then)."""
        link, self._link = self._link, None
        if link is None:
            return
        if self._lost is None and link.alive:
            try:
                problems = link.call("stop", within=max(5.0, self.answer_within))
            except DriverError as e:  # it crashed or hung while stopping
                problems = [str(e)]
            for problem in problems:
                log.warning("UR arm %s: %s while stopping", self.host, problem)
        link.close()

    def _close_link(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.close()

    def observe(self) -> dict[str, Any]:
        state = self._state()
        q = np.asarray(state["q"], dtype=np.float64)
        tcp = np.asarray(state["tcp"], dtype=np.float64)
        if self.control == "servoL":
            setpoint = self._sp_pos.copy()
        else:
            setpoint = np.asarray(state["target_tcp"], dtype=np.float64)[:3]
        # Stamped when the reading has arrived here, not when ur_rtde's process took it: the
        # session reads the cameras just before the robot, and a frame taken then must not look
        # newer than the robot state it is stored with.
        stamp = time.time()
        self._check_link(state)
        if q.shape != (6,) or tcp.shape != (6,):
            raise ConnectionLost(f"UR controller at {self.host} sent no state yet")
        return {
            "joint_pos": q,
            "joint_vel": np.asarray(state["qd"], dtype=np.float64),
            "ee_pos": tcp[:3].copy(),
            "ee_rot": tcp[3:].copy(),
            "ee_setpoint": setpoint,
            "tcp_force": np.asarray(state["force"], dtype=np.float64),
            "gripper": np.array([self._gripper]),
            "gripper_points": self.gripper_geometry.points(
                tcp[:3], tcp[3:], (self._gripper + 1.0) / 2.0
            ),
            "robot_mode": np.array([float(state["robot_mode"])]),
            "safety_mode": np.array([float(state["safety_mode"])]),
            "timestamp": stamp,
        }

    def command(self, action: np.ndarray) -> np.ndarray:
        action = self.checked_action(action)
        sent = np.clip(action, self._spec.low, self._spec.high)
        state = self._servo(sent)
        self._check_link(state)
        self._check_ready(state, action="command")
        if state["taken"] is None:  # the arm can move but the control script is not running
            self._restart_script()
            state = self._servo(sent)
        if not state["taken"]:
            # ur_rtde answers False when the script stopped under it: say why.
            self._check_link(state)
            self._check_ready(state, action="command")
            raise DriverError(
                f"{self.name}: the controller did not take the {self.control} command (its "
                "control script is not running); reconnect to upload it again"
            )
        self._set_gripper(float(sent[-1]))
        return sent

    def _servo(self, sent: np.ndarray) -> dict[str, Any]:
        """Send `sent` with servoL (added to the setpoint) or servoJ if the controller can take
        it, in one round trip (`RTDELink.servo`); the state it was decided on, with "taken"."""
        if self.control == "servoL":
            position = self._sp_pos + sent[:3]
            rotation = matrix_from_rotvec(sent[3:6]) @ self._sp_rot
            target = [*position.tolist(), *rotvec_from_matrix(rotation).tolist()]
        else:
            target = sent[:6].tolist()
        state = self._vendor(
            "servo", self.control, target, 1.0 / self.hz, self.lookahead_time, self.gain
        )
        if state["taken"] and self.control == "servoL":
            self._sp_pos, self._sp_rot = position, rotation
        return state

    def hold(self) -> np.ndarray:
        """servoL: no displacement; servoJ: the joints where they are now. Either keeps the
        gripper as last commanded, since opening it would drop what it holds."""
        if self.control == "servoL":
            return np.array([0.0] * 6 + [self._gripper])
        q = np.asarray(self._state()["q"], dtype=np.float64)
        return np.concatenate([q, [self._gripper]])

    def home(self, seed: int | None = None) -> int | None:
        """A real arm stays where the operator left it; the setpoint restarts from there, so
        the first delta of an episode is relative to the arm's actual pose."""
        if self._link is not None:
            self._reset_setpoint()
        return None

    def identity(self) -> dict[str, Any]:
        return {
            "robot": self.name,
            "driver": type(self).__name__,
            "host": self.host,
            "control": self.control,
            "hz": self.hz,
            **self._identity,
        }

    def safety_defaults(self) -> dict[str, Any] | None:
        """None: a real arm's workspace depends on what stands around it, so only the user can
        give it (configs/robots/ur5e.yaml is a starting point)."""
        return None

    # --- stops -----------------------------------------------------------------------------------
    @property
    def safety_status(self) -> str:
        """The controller's safety mode by name ("NORMAL", "PROTECTIVE_STOP", ...)."""
        return SAFETY_MODES.get(int(self._state()["safety_mode"]), "UNKNOWN")

    @property
    def robot_status(self) -> str:
        """The controller's robot mode by name ("RUNNING", "POWER_OFF", ...)."""
        return ROBOT_MODES.get(int(self._state()["robot_mode"]), "UNKNOWN")

    def recover(self, timeout: float = 10.0) -> None:
        """Clear a protective stop, or bring the arm back after a released emergency stop
        (power on, brake release), through the dashboard server, then restart the control
        script. The cause of the stop must have been dealt with first: this only does what
        the pendant's buttons would."""

        def safety() -> int:
            return int(self._state()["safety_mode"])

        def robot() -> int:
            return int(self._state()["robot_mode"])

        try:
            self._dashboard("closeSafetyPopup")
            if safety() == 3:
                answer = self._dashboard("unlockProtectiveStop")
                if not self._wait(lambda: safety() in MOVABLE_SAFETY, 1.0):
                    raise DriverError(
                        f"{self.name}: the controller did not unlock the protective stop"
                        + (f" ({answer})" if answer else "")
                        + "; e-Series arms allow it 5 s after the stop, try again"
                    )
            elif safety() not in MOVABLE_SAFETY:
                raise DriverError(
                    f"{self.name}: safety mode {SAFETY_MODES.get(safety(), safety())} cannot be "
                    "cleared from here: release the emergency stop button (or clear the fault) "
                    "and confirm on the pendant, then call recover() again"
                )
            if robot() != RUNNING:
                self._dashboard("powerOn")
                self._wait(lambda: robot() in (4, 5, RUNNING), timeout)
                self._dashboard("brakeRelease")
                if not self._wait(lambda: robot() == RUNNING, timeout):
                    raise DriverError(
                        f"{self.name}: the arm did not reach RUNNING (it is "
                        f"{ROBOT_MODES.get(robot(), '?')}); power it on and "
                        "release the brakes on the pendant"
                    )
        except DriverError:
            raise
        except RuntimeError as e:  # the dashboard refused or its connection broke
            self._check_link(self._state())
            raise DriverError(f"{self.name}: dashboard: {_one_line(e)}") from None
        if self._state()["program_running"]:
            self._reset_setpoint()
        else:
            self._restart_script()

    # --- internals -------------------------------------------------------------------------------
    def _call(self, method: str, *args: Any, within: float | None = None) -> Any:
        """`RTDELink.method(*args)` wherever ur_rtde runs. Once the link is known lost every
        call raises that; a crashed or hung ur_rtde becomes the lost link it is."""
        if self._lost is not None:
            raise self._lost_error()
        if self._link is None:
            raise DriverError(f"{self.name} is not connected; call connect() or use `with`")
        try:
            return self._link.call(method, *args, within=within)
        except DriverCrashed as e:
            raise self._lose(str(e), crash=e) from None

    def _state(self) -> dict[str, Any]:
        """Everything the driver reads from the controller, in one round trip."""
        return self._call("state")

    def _dashboard(self, command: str) -> str:
        return self._call("dashboard", command, within=self.connect_timeout + 20.0)

    def _lose(self, why: str, crash: DriverCrashed | None = None) -> ConnectionLost:
        message = (
            f"lost the UR controller at {self.host} ({why}): check its power and network cable, "
            "then reconnect"
        )
        self._lost = (
            DriverCrashed(message, crash.signal) if crash is not None else ConnectionLost(message)
        )
        return self._lost_error()

    def _lost_error(self) -> ConnectionLost:
        """A fresh copy of the error that marked the link lost, for each call that meets it."""
        lost = self._lost
        assert lost is not None
        if isinstance(lost, DriverCrashed):
            return DriverCrashed(str(lost), lost.signal)
        return ConnectionLost(str(lost))

    def _check_link(self, state: dict[str, Any]) -> None:
        """Raise ConnectionLost once the RTDE link is closed or its state stopped changing."""
        if not state["receive_connected"] or state["control_connected"] is False:
            raise self._lose("connection closed")
        stamp = float(state["timestamp"])
        now = time.monotonic()
        if stamp != self._last_stamp:
            self._last_stamp, self._last_change = stamp, now
        elif now - self._last_change > self.stale_after:
            raise self._lose(f"no state for {now - self._last_change:.1f} s")

    def _check_ready(self, state: dict[str, Any], action: str) -> None:
        safety = int(state["safety_mode"])
        robot = int(state["robot_mode"])
        then = "then reconnect" if action == "connect" else "then call recover() or reconnect"
        if safety == 3:
            raise DriverError(
                "UR protective stop: remove its cause, clear it on the pendant or with the "
                f"dashboard's 'unlock protective stop', {then}"
            )
        if safety in (6, 7):
            raise DriverError(
                f"UR emergency stop ({SAFETY_MODES[safety]}): release the e-stop button, confirm "
                f"on the pendant, power on and release the brakes, {then}"
            )
        if safety not in MOVABLE_SAFETY:
            raise DriverError(
                f"UR safety mode {SAFETY_MODES.get(safety, safety)}: the arm cannot move; clear "
                f"it on the pendant, {then}"
            )
        if robot != RUNNING:
            raise DriverError(
                f"UR arm is {ROBOT_MODES.get(robot, robot)}, not RUNNING: power it on and release "
                f"the brakes (pendant, or dashboard 'power on' + 'brake release'), {then}"
            )

    def _vendor(self, method: str, *args: Any, within: float | None = None) -> Any:
        """A command into ur_rtde; its exceptions (a reconnect that failed, a closed socket)
        become ConnectionLost or a one-line DriverError."""
        try:
            return self._call(method, *args, within=within)
        except DriverError:
            raise
        except RuntimeError as e:
            state = self._state()
            if not state["receive_connected"] or not state["control_connected"]:
                raise self._lose(_one_line(e)) from None
            raise DriverError(f"{self.name}: {_one_line(e)}") from None

    def _restart_script(self) -> None:
        """Upload the control script again (a stop ends it) and restart the setpoint from the
        arm's actual pose, so nothing jumps to where the arm was before the stop."""
        log.warning("UR arm %s: control script not running, uploading it again", self.host)
        self._vendor("reupload_script", within=self.connect_timeout + 20.0)
        if not self._wait(lambda: bool(self._state()["program_running"]), 5.0):
            raise DriverError(
                f"{self.name}: the control script did not start; check the pendant for a popup "
                "and that the arm is in Remote Control"
            )
        self._reset_setpoint()

    def _reset_setpoint(self) -> None:
        tcp = np.asarray(self._state()["tcp"], dtype=np.float64)
        if tcp.shape == (6,):
            self._sp_pos = tcp[:3].copy()
            self._sp_rot = matrix_from_rotvec(tcp[3:])

    def _wait_state(self) -> None:
        """Until the receive interface has a first state (ur_rtde fills it asynchronously)."""

        def first_state() -> bool:
            state = self._state()
            return len(state["q"]) == 6 and state["timestamp"] > 0

        if not self._wait(first_state, 5.0):
            raise DriverError(f"UR controller at {self.host} sends no RTDE state")

    @staticmethod
    def _wait(condition: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if condition():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)

    def _set_gripper(self, value: float) -> None:
        """Tool digital output 0 follows the gripper dim (> 0 closes), sent only on change as
        a secondary program, which runs beside the control script without interrupting it."""
        self._gripper = value
        if self.gripper_output is None:
            return
        closed = value > 0.0
        if closed == self._tool_out:
            return
        script = (
            f"sec il_gripper():\n  set_tool_digital_out(0, {'True' if closed else 'False'})\nend\n"
        )
        try:
            with socket.create_connection((self.host, SECONDARY_PORT), timeout=0.5) as s:
                s.sendall(script.encode())
        except OSError as e:
            raise self._lose(f"secondary interface: {e}") from None
        self._tool_out = closed


class RTDELink:
    """ur_rtde's three clients (dashboard, RTDE receive, RTDE control) and every call `URArm`
    makes into them, each one round trip.

    It runs where ur_rtde runs: in a process of its own unless the arm says `isolate: false`
    (`robots.vendor_process`), so a crash in ur_rtde's C++ threads ends that process and not
    the session. It holds no logic of the driver's: `URArm` checks, decides and explains."""

    def __init__(self, host: str) -> None:
        self.host = host
        self._rtde_control = vendor_library("rtde_control", "ur", "UR arm")
        self._rtde_receive = vendor_library("rtde_receive", "ur", "UR arm")
        self._dashboard_client = vendor_library("dashboard_client", "ur", "UR arm")
        self._dashboard: Any = None
        self._receive: Any = None
        self._control: Any = None

    def open_dashboard(self, timeout_ms: int) -> None:
        dashboard = self._dashboard_client.DashboardClient(self.host)
        dashboard.connect(timeout_ms)
        self._dashboard = dashboard

    def open_receive(self, frequency: float, upper_range_registers: bool) -> None:
        self._receive = self._rtde_receive.RTDEReceiveInterface(
            self.host, frequency, [], False, upper_range_registers
        )

    def open_control(self, frequency: float, upper_range_registers: bool) -> None:
        flags = self._rtde_control.RTDEControlInterface.Flags
        mode = int(flags.FLAG_UPLOAD_SCRIPT)
        if upper_range_registers:
            mode |= int(flags.FLAG_UPPER_RANGE_REGISTERS)
        self._control = self._rtde_control.RTDEControlInterface(self.host, frequency, mode)

    def state(self) -> dict[str, Any]:
        """The controller's latest state and the clients' health: "control_connected" and
        "program_running" are None until the control client exists."""
        r, control = self._receive, self._control
        connected = None if control is None else _alive(control)
        running = None
        if connected:
            try:
                running = bool(control.isProgramRunning())
            except RuntimeError:
                running = False
        return {
            "q": list(r.getActualQ()),
            "qd": list(r.getActualQd()),
            "tcp": list(r.getActualTCPPose()),
            "target_tcp": list(r.getTargetTCPPose()),
            "force": list(r.getActualTCPForce()),
            "robot_mode": int(r.getRobotMode()),
            "safety_mode": int(r.getSafetyMode()),
            "timestamp": float(r.getTimestamp()),
            "receive_connected": bool(r.isConnected()),
            "control_connected": connected,
            "program_running": running,
        }

    def servo(
        self, control: str, target: list[float], dt: float, lookahead_time: float, gain: float
    ) -> dict[str, Any]:
        """servoL (a TCP pose) or servoJ (joints), sent only if the controller can take it
        now: connected, a movable safety mode, RUNNING and the control script running. The
        state it was decided on, with "taken": what ur_rtde answered (False: the controller did
        not take it), None when nothing was sent."""
        state = self.state()
        ready = (
            state["receive_connected"]
            and state["control_connected"]
            and state["program_running"]
            and state["safety_mode"] in MOVABLE_SAFETY
            and state["robot_mode"] == RUNNING
        )
        state["taken"] = None
        if ready:
            call = self._control.servoL if control == "servoL" else self._control.servoJ
            state["taken"] = bool(call(target, 0.0, 0.0, dt, lookahead_time, gain))
        return state

    def reupload_script(self) -> bool:
        return bool(self._control.reuploadScript())

    def stop(self) -> list[str]:
        """Stop servoing and end the control script; the problems met, as text (an arm that
        cannot be stopped any more is no reason to fail a disconnect)."""
        problems: list[str] = []
        if self._control is None or not _alive(self._control):
            return problems
        for stop in (self._control.servoStop, self._control.stopScript):
            try:
                stop()
            except RuntimeError as e:
                problems.append(_one_line(e))
        return problems

    def dashboard(self, command: str) -> str:
        """One dashboard request: closeSafetyPopup, unlockProtectiveStop, powerOn or
        brakeRelease; what the controller answered."""
        if command not in ("closeSafetyPopup", "unlockProtectiveStop", "powerOn", "brakeRelease"):
            raise ValueError(f"not a dashboard request of the driver's: {command}")
        answer = getattr(self._dashboard, command)()
        return "" if answer is None else str(answer)

    def identity(self) -> dict[str, Any]:
        """Controller version, serial number and model, from the dashboard (the last two exist
        from PolyScope 5.6; older controllers leave them out)."""
        from importlib import metadata

        out: dict[str, Any] = {}
        with contextlib.suppress(metadata.PackageNotFoundError):
            out["ur_rtde"] = metadata.version("ur_rtde")
        d = self._dashboard
        for key, call in (
            ("controller_version", d.polyscopeVersion),
            ("serial", d.getSerialNumber),
            ("model", d.getRobotModel),
        ):
            try:
                value = str(call()).strip()
            except RuntimeError:
                continue
            if value:
                out[key] = value
        return out

    def close(self) -> None:
        """Close every client; errors of a connection already gone do not matter here."""
        clients = (self._control, self._receive, self._dashboard)
        self._control = self._receive = self._dashboard = None
        for client in clients:
            if client is not None:
                with contextlib.suppress(RuntimeError):
                    client.disconnect()


def _alive(control: Any) -> bool:
    try:
        return bool(control.isConnected())
    except RuntimeError:
        return False


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__
