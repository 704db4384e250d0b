"""A Universal Robots controller on the loopback interface, for testing the UR driver through
ur_rtde itself.

A real arm cannot sit in a test suite, and a mock of ur_rtde would only test our idea of it.
This emulator instead speaks the controller's own network protocols, the way ur_rtde uses them,
so `robots.ur` runs unchanged against it:

* RTDE (port 30004): protocol version 2, controller version, output recipes (any of the
  controller's output variables, at the frequency the client asks), input recipes (registers,
  tool/standard digital outputs, ...), start/pause, data packages both ways.
* Dashboard server (29999): the text commands ur_rtde's `DashboardClient` and
  `RTDEControlInterface` send (PolyScope version, robot/safety mode, remote control, serial
  number, robot model, power on/brake release, unlock protective stop, close safety popup,
  play/stop, ...).
* Script ports (30001, 30002, 30003): URScript text. The script `RTDEControlInterface` uploads
  (`def rtde_control():`) is not interpreted; the emulator behaves as the controller does while
  running it: it reads the command id from input integer register 0 and the arguments from the
  input double registers, acknowledges through output integer register 0 (1: ready for a
  command, 2: done with it) and executes servoJ, servoL, speedJ/L, moveJ/L, stopJ/L, servoStop,
  speedStop and stopScript, plus the forward/inverse kinematics queries, with the register
  offset (0 or 24) the script was uploaded with.

The arm is a UR5e: forward kinematics on its DH parameters gives `actual_TCP_pose`, servoL and
moveL solve inverse kinematics by damped least squares, and joints track their targets at a
bounded speed. Protective stop, emergency stop and their recovery behave as on an e-Series
controller (safety mode and status bits, program stopped, dashboard replies).

Each emulator binds only a loopback address. ur_rtde uses fixed port numbers, so every instance
takes its own 127.x.y.z address (all of 127/8 is loopback on Linux) and tests never clash:

    python -m robots.emulators.ur_controller --host 127.0.0.2     # then --robot ur:127.0.0.2

From Python, `URControllerEmulator` runs it in a child process and drives its faults:

    with URControllerEmulator() as ur:
        arm = URArm(ur.host); arm.connect()
        ur.protective_stop(); ...; ur.kill()   # SIGKILL: the controller vanishes mid-episode
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import math
import random
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robots.rotations import matrix_from_rotvec, rotvec_from_matrix
from robots.ur import ROBOT_MODES, SAFETY_MODES

__all__ = [
    "DASHBOARD_PORT",
    "RTDE_PORT",
    "SCRIPT_PORTS",
    "UR5E_DH",
    "URControllerEmulator",
    "forward_kinematics",
    "inverse_kinematics",
    "serve",
]

log = logging.getLogger(__name__)

DASHBOARD_PORT = 29999
RTDE_PORT = 30004
SCRIPT_PORTS = (30001, 30002, 30003)
CONTROL_HZ = 500.0
"""The e-Series controller's cycle: joints are stepped and RTDE clients served at this rate."""

POLYSCOPE = (5, 15, 0, 11_7112)
SERIAL = "20235500042"
MODEL = "UR5"  # what the dashboard of a UR5e answers to "get robot model"

# --- UR5e kinematics ------------------------------------------------------------------------
# Standard DH parameters of the UR5e (Universal Robots' published values): d, a, alpha per joint.
UR5E_DH = {
    "d": np.array([0.1625, 0.0, 0.0, 0.1333, 0.0997, 0.0996]),
    "a": np.array([0.0, -0.425, -0.3922, 0.0, 0.0, 0.0]),
    "alpha": np.array([math.pi / 2, 0.0, 0.0, math.pi / 2, -math.pi / 2, 0.0]),
}
HOME_Q = np.array([1.2701, -1.6044, 2.1033, -2.0697, -1.5708, 1.2701])
"""Where the emulated arm starts: tool pointing down at (0, -0.45, 0.30) m, inside the example
workspace of configs/robots/ur5e.yaml, elbow up and clear of singularities."""
MAX_JOINT_SPEED = math.pi  # rad/s, the UR5e's joint limit (180 deg/s)
JOINT_LIMIT = 2 * math.pi


def _frames(q: np.ndarray) -> list[np.ndarray]:
    """Base-to-frame transforms 0..6 (frame 0 is the base)."""
    d, a, alpha = UR5E_DH["d"], UR5E_DH["a"], UR5E_DH["alpha"]
    out = [np.eye(4)]
    T = np.eye(4)
    for i in range(6):
        ct, st = math.cos(q[i]), math.sin(q[i])
        ca, sa = math.cos(alpha[i]), math.sin(alpha[i])
        A = np.array(
            [
                [ct, -st * ca, st * sa, a[i] * ct],
                [st, ct * ca, -ct * sa, a[i] * st],
                [0.0, sa, ca, d[i]],
                [0.0, 0.0, 0.0, 1.0],
            ]
        )
        T = T @ A
        out.append(T)
    return out


def forward_kinematics(q: np.ndarray) -> np.ndarray:
    """TCP pose [x, y, z, rx, ry, rz] (metres, rotation vector) of joint angles `q`, flange as
    TCP (no tool offset), as `actual_TCP_pose` reports it."""
    T = _frames(np.asarray(q, dtype=np.float64))[-1]
    return np.concatenate([T[:3, 3], rotvec_from_matrix(T[:3, :3])])


def _jacobian(frames: list[np.ndarray]) -> np.ndarray:
    p_end = frames[-1][:3, 3]
    J = np.zeros((6, 6))
    for i in range(6):
        z = frames[i][:3, 2]
        J[:3, i] = np.cross(z, p_end - frames[i][:3, 3])
        J[3:, i] = z
    return J


def inverse_kinematics(
    pose: np.ndarray, q_near: np.ndarray, *, iterations: int = 100, tol: float = 1e-7
) -> tuple[np.ndarray, bool]:
    """Joint angles reaching `pose`, found by damped least squares from `q_near` (so the
    solution stays on the arm's current branch, as the controller's `get_inverse_kin` does
    with `qnear`). Returns (q, converged)."""
    target = np.asarray(pose, dtype=np.float64)
    R_t = matrix_from_rotvec(target[3:6])
    q = np.asarray(q_near, dtype=np.float64).copy()
    damping = 1e-2
    for _ in range(iterations):
        frames = _frames(q)
        T = frames[-1]
        err = np.concatenate([target[:3] - T[:3, 3], rotvec_from_matrix(R_t @ T[:3, :3].T)])
        if float(np.dot(err, err)) < tol * tol:
            return q, True
        J = _jacobian(frames)
        dq = J.T @ np.linalg.solve(J @ J.T + damping**2 * np.eye(6), err)
        step = float(np.max(np.abs(dq)))
        if step > 0.5:  # keep each step in the region where the linearisation holds
            dq *= 0.5 / step
        q = q + dq
    frames = _frames(q)
    T = frames[-1]
    err = np.concatenate([target[:3] - T[:3, 3], rotvec_from_matrix(R_t @ T[:3, :3].T)])
    return q, bool(np.linalg.norm(err) < 1e-4)


# --- RTDE protocol ----------------------------------------------------------------------------
RTDE_REQUEST_PROTOCOL_VERSION = 86  # 'V'
RTDE_GET_URCONTROL_VERSION = 118  # 'v'
RTDE_TEXT_MESSAGE = 77  # 'M'
RTDE_DATA_PACKAGE = 85  # 'U'
RTDE_CONTROL_PACKAGE_SETUP_OUTPUTS = 79  # 'O'
RTDE_CONTROL_PACKAGE_SETUP_INPUTS = 73  # 'I'
RTDE_CONTROL_PACKAGE_START = 83  # 'S'
RTDE_CONTROL_PACKAGE_PAUSE = 80  # 'P'

_FORMATS = {
    "BOOL": ">?",
    "UINT8": ">B",
    "UINT32": ">I",
    "UINT64": ">Q",
    "INT32": ">i",
    "DOUBLE": ">d",
    "VECTOR3D": ">3d",
    "VECTOR6D": ">6d",
    "VECTOR6INT32": ">6i",
    "VECTOR6UINT32": ">6I",
}


def _output_types() -> dict[str, str]:
    """Every controller output the RTDE guide lists, with its wire type."""
    types: dict[str, str] = {}
    for name in (
        "target_q",
        "target_qd",
        "target_qdd",
        "target_current",
        "target_moment",
        "actual_q",
        "actual_qd",
        "actual_current",
        "actual_current_window",
        "joint_control_output",
        "actual_TCP_pose",
        "actual_TCP_speed",
        "actual_TCP_force",
        "target_TCP_pose",
        "target_TCP_speed",
        "joint_temperatures",
        "actual_joint_voltage",
        "ft_raw_wrench",
        "payload_inertia",
        "actual_current_as_torque",
        "target_current_as_torque",
    ):
        types[name] = "VECTOR6D"
    for name in (
        "timestamp",
        "actual_execution_time",
        "speed_scaling",
        "target_speed_fraction",
        "actual_momentum",
        "actual_main_voltage",
        "actual_robot_voltage",
        "actual_robot_current",
        "standard_analog_input0",
        "standard_analog_input1",
        "standard_analog_output0",
        "standard_analog_output1",
        "io_current",
        "euromap67_24V_voltage",
        "euromap67_24V_current",
        "tool_analog_input0",
        "tool_analog_input1",
        "tool_output_current",
        "tool_temperature",
        "tcp_force_scalar",
        "payload",
        "joint_position_deviation_ratio",
        "collision_detection_ratio",
    ):
        types[name] = "DOUBLE"
    for name in (
        "runtime_state",
        "robot_status_bits",
        "safety_status_bits",
        "analog_io_types",
        "euromap67_input_bits",
        "euromap67_output_bits",
        "tool_mode",
        "tool_analog_input_types",
        "output_bit_registers0_to_31",
        "output_bit_registers32_to_63",
        "input_bit_registers0_to_31",
        "input_bit_registers32_to_63",
        "script_control_line",
        "time_scale_source",
    ):
        types[name] = "UINT32"
    for name in ["robot_mode", "safety_mode", "safety_status", "tool_output_voltage"]:
        types[name] = "INT32"
    for name in ["actual_digital_input_bits", "actual_digital_output_bits"]:
        types[name] = "UINT64"
    for name in ["actual_tool_accelerometer", "elbow_position", "elbow_velocity", "payload_cog"]:
        types[name] = "VECTOR3D"
    types["joint_mode"] = "VECTOR6INT32"
    for name in ["tool_output_mode", "tool_digital_output0_mode", "tool_digital_output1_mode"]:
        types[name] = "UINT8"
    for i in range(48):
        for prefix in ("output", "input"):
            types[f"{prefix}_int_register_{i}"] = "INT32"
            types[f"{prefix}_double_register_{i}"] = "DOUBLE"
    for i in range(64, 128):
        types[f"output_bit_register_{i}"] = "BOOL"
        types[f"input_bit_register_{i}"] = "BOOL"
    return types


def _input_types() -> dict[str, str]:
    """Every controller input a client may set up, with its wire type."""
    types = {
        "speed_slider_mask": "UINT32",
        "speed_slider_fraction": "DOUBLE",
        "standard_digital_output_mask": "UINT8",
        "standard_digital_output": "UINT8",
        "configurable_digital_output_mask": "UINT8",
        "configurable_digital_output": "UINT8",
        "tool_digital_output_mask": "UINT8",
        "tool_digital_output": "UINT8",
        "standard_analog_output_mask": "UINT8",
        "standard_analog_output_type": "UINT8",
        "standard_analog_output_0": "DOUBLE",
        "standard_analog_output_1": "DOUBLE",
        "input_bit_registers0_to_31": "UINT32",
        "input_bit_registers32_to_63": "UINT32",
        "external_force_torque": "VECTOR6D",
    }
    for i in range(48):
        types[f"input_int_register_{i}"] = "INT32"
        types[f"input_double_register_{i}"] = "DOUBLE"
    for i in range(64, 128):
        types[f"input_bit_register_{i}"] = "BOOL"
    return types


OUTPUT_TYPES = _output_types()
INPUT_TYPES = _input_types()


def _recv_exact(sock: socket.socket, n: int, stop: threading.Event) -> bytes | None:
    """n bytes, or None once the peer closed or the server stops (the socket has a timeout, so
    the wait is bounded and `stop` is checked between tries)."""
    chunks = b""
    while len(chunks) < n:
        if stop.is_set():
            return None
        try:
            chunk = sock.recv(n - len(chunks))
        except TimeoutError:
            continue
        except OSError:
            return None
        if not chunk:
            return None
        chunks += chunk
    return chunks


# --- The controller -----------------------------------------------------------------------------
# Robot modes, safety modes and runtime states as RTDE and the dashboard report them (their
# names: robots.ur.ROBOT_MODES / SAFETY_MODES, shared with the driver).
POWER_OFF, IDLE, RUNNING = 3, 5, 7
NORMAL, PROTECTIVE_STOP, ROBOT_EMERGENCY_STOP = 1, 3, 7
STOPPED, PLAYING = 1, 2

# ur_rtde's command ids (RTDE::RobotCommand::Type), as its control script dispatches them.
CMD = {
    "NO_CMD": 0,
    "MOVEJ": 1,
    "MOVEJ_IK": 2,
    "MOVEL": 3,
    "MOVEL_FK": 4,
    "FORCE_MODE": 6,
    "FORCE_MODE_STOP": 7,
    "ZERO_FT_SENSOR": 8,
    "SPEEDJ": 9,
    "SPEEDL": 10,
    "SERVOJ": 11,
    "SERVOC": 12,
    "SET_STD_DIGITAL_OUT": 13,
    "SET_TOOL_DIGITAL_OUT": 14,
    "SPEED_STOP": 15,
    "SERVO_STOP": 16,
    "SET_PAYLOAD": 17,
    "TEACH_MODE": 18,
    "END_TEACH_MODE": 19,
    "FORCE_MODE_SET_DAMPING": 20,
    "FORCE_MODE_SET_GAIN_SCALING": 21,
    "SET_SPEED_SLIDER": 22,
    "SET_STD_ANALOG_OUT": 23,
    "SERVOL": 24,
    "TOOL_CONTACT": 25,
    "GET_STEPTIME": 26,
    "GET_ACTUAL_JOINT_POSITIONS_HISTORY": 27,
    "GET_TARGET_WAYPOINT": 28,
    "SET_TCP": 29,
    "GET_INVERSE_KINEMATICS_ARGS": 30,
    "PROTECTIVE_STOP": 31,
    "STOPL": 33,
    "STOPJ": 34,
    "SET_WATCHDOG": 35,
    "IS_POSE_WITHIN_SAFETY_LIMITS": 36,
    "IS_JOINTS_WITHIN_SAFETY_LIMITS": 37,
    "GET_JOINT_TORQUES": 38,
    "POSE_TRANS": 39,
    "GET_TCP_OFFSET": 40,
    "JOG_START": 41,
    "JOG_STOP": 42,
    "GET_FORWARD_KINEMATICS_DEFAULT": 43,
    "GET_FORWARD_KINEMATICS_ARGS": 44,
    "MOVE_PATH": 45,
    "GET_INVERSE_KINEMATICS_DEFAULT": 46,
    "IS_STEADY": 47,
    "SET_CONF_DIGITAL_OUT": 48,
    "SET_INPUT_INT_REGISTER": 49,
    "SET_INPUT_DOUBLE_REGISTER": 50,
    "MOVE_UNTIL_CONTACT": 51,
    "FREEDRIVE_MODE": 52,
    "END_FREEDRIVE_MODE": 53,
    "GET_FREEDRIVE_STATUS": 54,
    "SET_EXTERNAL_FORCE_TORQUE": 55,
    "FT_RTDE_INPUT_ENABLE": 56,
    "ENABLE_EXTERNAL_FT_SENSOR": 57,
    "GET_ACTUAL_TOOL_FLANGE_POSE": 58,
    "SET_GRAVITY": 59,
    "GET_INVERSE_KINEMATICS_HAS_SOLUTION_DEFAULT": 60,
    "GET_INVERSE_KINEMATICS_HAS_SOLUTION_ARGS": 61,
    "START_CONTACT_DETECTION": 62,
    "STOP_CONTACT_DETECTION": 63,
    "READ_CONTACT_DETECTION": 64,
    "SET_TARGET_PAYLOAD": 65,
    "STOP_SCRIPT": 255,
}
CMD_NAMES = {v: k for k, v in CMD.items()}
REALTIME_CMDS = frozenset({6, 9, 10, 11, 24, 25, 26, 27, 38, 58, 66, 67, 68, 69, 70, 71})
"""Commands the script takes every cycle without a done/clear handshake (servo, speed, ...)."""
READY_FOR_CMD, DONE_WITH_CMD = 1, 2


@dataclass
class _Client:
    """One RTDE connection: its recipes and, once started, when its next package is due."""

    sock: socket.socket
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    output_names: list[str] = field(default_factory=list)
    output_period: float = 1.0 / CONTROL_HZ
    inputs: dict[int, list[str]] = field(default_factory=dict)
    started: bool = False
    next_due: float = 0.0
    alive: bool = True


class Controller:
    """The emulated controller: arm state, safety state, the running program and the servers
    that expose them. One control thread steps it at `CONTROL_HZ`; server threads only parse and
    answer, under `lock`."""

    def __init__(self, host: str, *, unlock_delay: float = 5.0, script_log: str | None = None):
        self.host = host
        self.unlock_delay = float(unlock_delay)
        self.script_log = script_log
        self.lock = threading.RLock()
        self.stop = threading.Event()
        self.t0 = time.monotonic()
        # Arm
        self.q = HOME_Q.copy()
        self.qd = np.zeros(6)
        self.q_target = HOME_Q.copy()
        self.speed_target = np.zeros(6)  # joint speeds for speedJ/L
        self.motion = "idle"  # idle | servo | move | speed
        self.move_from = HOME_Q.copy()
        self.move_duration = 1.0
        self.move_elapsed = 0.0
        self.tcp = forward_kinematics(self.q)
        # Safety and power
        self.robot_mode = RUNNING
        self.safety_mode = NORMAL
        self.stopped_at = 0.0
        self.estop_pressed = False
        self.popup = False
        # Program
        self.program_running = False
        self.program_name = "<unnamed>"
        self.reg_offset = 0
        self.executing = False
        self.blocking_move = False
        self.commands: dict[str, int] = {}  # how many of each command ran (for tests)
        # I/O and registers
        self.tool_out = 0  # bits 0-1: tool digital outputs
        self.std_out = 0  # bits 0-7 standard, 8-15 configurable
        self.in_int = [0] * 48
        self.in_double = [0.0] * 48
        self.out_int = [0] * 48
        self.out_double = [0.0] * 48
        self.speed_slider = 1.0
        self.clients: list[_Client] = []
        self.sockets: list[socket.socket] = []
        self.connections: set[socket.socket] = set()  # every open client connection, any port
        self.threads: list[threading.Thread] = []

    # --- servers ---------------------------------------------------------------------------------
    def bind(self) -> None:
        """Bind every port on the loopback address (raises OSError if one is taken)."""
        if not ipaddress.ip_address(self.host).is_loopback:
            raise OSError(f"the emulator binds loopback addresses only, not {self.host}")
        handlers: list[tuple[int, Callable[[socket.socket], None]]] = [
            (DASHBOARD_PORT, self._serve_dashboard),
            (RTDE_PORT, self._serve_rtde),
        ] + [(port, self._serve_script) for port in SCRIPT_PORTS]
        try:
            for port, handler in handlers:
                srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                srv.bind((self.host, port))
                srv.listen(8)
                srv.settimeout(0.2)
                self.sockets.append(srv)
                self._spawn(self._accept, srv, handler)
        except OSError:
            self.close()
            raise

    def start(self) -> None:
        self._spawn(self._control_loop)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _accept(self, srv: socket.socket, handler: Callable[[socket.socket], None]) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(0.2)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._spawn(self._guard, handler, conn)

    def _guard(self, handler: Callable[[socket.socket], None], conn: socket.socket) -> None:
        with self.lock:
            self.connections.add(conn)
        try:
            handler(conn)
        except Exception:  # one misbehaving client must not take the controller down
            if self.stop.is_set() or conn.fileno() < 0:
                return  # its connection was dropped under it on purpose
            log.exception("ur emulator: connection handler failed")
        finally:
            with self.lock:
                self.connections.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def close(self) -> None:
        self.stop.set()
        for srv in self.sockets:
            with contextlib.suppress(OSError):
                srv.close()
        with self.lock:
            for client in self.clients:
                with contextlib.suppress(OSError):
                    client.sock.close()
        for thread in self.threads:
            if thread is not threading.current_thread():
                thread.join(timeout=1.0)

    # --- dashboard -------------------------------------------------------------------------------
    def _serve_dashboard(self, conn: socket.socket) -> None:
        conn.sendall(b"Connected: Universal Robots Dashboard Server\n")
        buf = b""
        while not self.stop.is_set():
            try:
                chunk = conn.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                command = line.decode(errors="replace").strip()
                reply = self.dashboard(command)
                conn.sendall(reply.encode() + b"\n")
                if command == "quit":
                    return

    def dashboard(self, command: str) -> str:
        """The dashboard server's answer to one command line."""
        cmd = command.strip()
        low = cmd.lower()
        with self.lock:
            if low == "polyscopeversion":
                major, minor, bugfix, build = POLYSCOPE
                return f"URSoftware {major}.{minor}.{bugfix}.{build} (Sep 26 2023)"
            if low == "version":
                major, minor, bugfix, build = POLYSCOPE
                return f"Version information: {major}.{minor}.{bugfix}.{build}"
            if low == "robotmode":
                return f"Robotmode: {ROBOT_MODES[self.robot_mode]}"
            if low == "safetystatus":
                return f"Safetystatus: {SAFETY_MODES[self.safety_mode]}"
            if low == "safetymode":
                return f"Safetymode: {SAFETY_MODES[self.safety_mode]}"
            if low == "is in remote control":
                return "true"
            if low == "get serial number":
                return SERIAL
            if low == "get robot model":
                return MODEL
            if low == "running":
                return f"Program running: {str(self.program_running).lower()}"
            if low == "programstate":
                state = "PLAYING" if self.program_running else "STOPPED"
                return f"{state} {self.program_name}"
            if low == "get loaded program":
                return f"Loaded program: {self.program_name}"
            if low == "isprogramsaved":
                return f"true {self.program_name}"
            if low == "power on":
                if self.robot_mode == POWER_OFF and self.safety_mode == NORMAL:
                    self.robot_mode = IDLE
                return "Powering on"
            if low == "power off":
                self._halt_program()
                self.robot_mode = POWER_OFF
                return "Powering off"
            if low == "brake release":
                if self.robot_mode in (IDLE, POWER_OFF) and self.safety_mode == NORMAL:
                    self.robot_mode = RUNNING
                return "Brake releasing"
            if low == "unlock protective stop":
                if self.safety_mode != PROTECTIVE_STOP:
                    return "Protective stop releasing"
                if time.monotonic() - self.stopped_at < self.unlock_delay:
                    return (
                        f"Cannot unlock protective stop until {self.unlock_delay:g}s after "
                        "occurrence. Always inspect cause of protective stop before unlocking"
                    )
                self.safety_mode = NORMAL
                return "Protective stop releasing"
            if low == "close safety popup":
                self.popup = False
                return "closing safety popup"
            if low == "restart safety":
                if not self.estop_pressed:
                    self.safety_mode = NORMAL
                    self.robot_mode = POWER_OFF
                return "Restarting safety"
            if low == "play":
                if self.safety_mode != NORMAL or self.robot_mode != RUNNING:
                    return "Failed to execute: play"
                return "Starting program"
            if low == "stop":
                self._halt_program()
                return "Stopped"
            if low == "pause":
                return "Pausing program"
            if low.startswith("load "):
                self.program_name = cmd[5:].strip()
                return f"Loading program: {self.program_name}"
            if low.startswith("popup "):
                return "showing popup"
            if low in ("close popup", "clear operational mode", "shutdown"):
                return {"close popup": "closing popup", "shutdown": "Shutting down"}.get(
                    low, "No longer controlling the operational mode. "
                )
            if low.startswith("set operational mode"):
                return f"Operational mode '{cmd.split()[-1]}' is set"
            if low == "get operational mode":
                return "NONE"
            if low == "quit":
                return "Disconnected"
            return f"could not understand: '{cmd}'"

    # --- script ports ----------------------------------------------------------------------------
    def _serve_script(self, conn: socket.socket) -> None:
        """URScript arrives as text; a program is complete once the sender pauses (ur_rtde
        writes it in one go), so the text gathered until a quiet 50 ms is run."""
        buf = b""
        last = time.monotonic()
        port = conn.getsockname()[1]
        conn.settimeout(0.05)
        while not self.stop.is_set():
            try:
                chunk = conn.recv(65536)
                if not chunk:
                    if buf:
                        self.run_script(buf.decode(errors="replace"), port)
                    return
                buf += chunk
                last = time.monotonic()
            except TimeoutError:
                if buf and time.monotonic() - last > 0.05:
                    self.run_script(buf.decode(errors="replace"), port)
                    buf = b""
            except OSError:
                return

    def run_script(self, text: str, port: int = 0) -> None:
        """What the controller does with a script. `def rtde_control():` (ur_rtde's control
        script) becomes the running program. A secondary program (`sec ...`) runs beside it
        without interrupting it; of its statements, tool and standard digital outputs are
        executed. Anything else is logged, not executed."""
        if self.script_log:
            with open(self.script_log, "a") as f:
                f.write(text)
                f.write(f"\n# ---- end of script (port {port}) ----\n")
        stripped = text.strip()
        with self.lock:
            if "def rtde_control():" in text:
                if self.safety_mode != NORMAL or self.robot_mode != RUNNING:
                    log.warning("ur emulator: program refused, the arm is not ready")
                    return
                # ur_rtde injects the offset after the declaration's comment, so the number
                # may start the next line: "reg_offset_int = # int register offset\n24 ...".
                m = re.search(r"reg_offset_int\s*=\s*(?:#[^\n]*\n)?\s*(\d+)", text)
                self.reg_offset = int(m.group(1)) if m else 0
                self.program_name = "rtde_control"
                self.program_running = True
                self.motion = "idle"
                self.q_target = self.q.copy()
                self.executing = False
                self.blocking_move = False
                self.out_int[self.reg_offset] = READY_FOR_CMD
                return
            if stripped.startswith("sec "):
                for which, pin, value in re.findall(
                    r"set_(tool|standard)_digital_out\(\s*(\d+)\s*,\s*(True|False)\s*\)", text
                ):
                    bit = 1 << int(pin)
                    if which == "tool":
                        self.tool_out = (
                            self.tool_out | bit if value == "True" else self.tool_out & ~bit
                        )
                    else:
                        self.std_out = (
                            self.std_out | bit if value == "True" else self.std_out & ~bit
                        )
                return
            if stripped.startswith(("stopj", "stopl", "halt")):
                self._halt_program()
                return
            log.info("ur emulator: script not executed: %s", stripped[:60])

    def _halt_program(self) -> None:
        """The running program ends and the arm stops where it is."""
        self.program_running = False
        self.motion = "idle"
        self.q_target = self.q.copy()
        self.qd = np.zeros(6)
        self.executing = False
        self.blocking_move = False
        self.out_int[self.reg_offset] = 0

    # --- RTDE ------------------------------------------------------------------------------------
    def _serve_rtde(self, conn: socket.socket) -> None:
        client = _Client(conn)
        with self.lock:
            self.clients.append(client)
        try:
            while not self.stop.is_set() and client.alive:
                header = _recv_exact(conn, 3, self.stop)
                if header is None:
                    return
                size, kind = struct.unpack(">HB", header)
                body = _recv_exact(conn, size - 3, self.stop) if size > 3 else b""
                if body is None:
                    return
                self._rtde_message(client, kind, body)
        finally:
            client.alive = False
            with self.lock:
                if client in self.clients:
                    self.clients.remove(client)

    def _send(self, client: _Client, kind: int, payload: bytes) -> None:
        data = struct.pack(">HB", len(payload) + 3, kind) + payload
        with client.send_lock:
            try:
                client.sock.sendall(data)
            except OSError:
                client.alive = False

    def _rtde_message(self, client: _Client, kind: int, body: bytes) -> None:
        if kind == RTDE_REQUEST_PROTOCOL_VERSION:
            (version,) = struct.unpack(">H", body[:2])
            self._send(client, kind, struct.pack(">B", 1 if version in (1, 2) else 0))
        elif kind == RTDE_GET_URCONTROL_VERSION:
            self._send(client, kind, struct.pack(">IIII", *POLYSCOPE))
        elif kind == RTDE_CONTROL_PACKAGE_SETUP_OUTPUTS:
            (frequency,) = struct.unpack(">d", body[:8])
            names = [n for n in body[8:].decode().split(",") if n]
            types = [OUTPUT_TYPES.get(n, "NOT_FOUND") for n in names]
            client.output_names = names
            hz = min(max(frequency, 1.0), CONTROL_HZ) if frequency > 0 else CONTROL_HZ
            client.output_period = 1.0 / hz
            if "NOT_FOUND" in types:
                missing = [n for n, t in zip(names, types, strict=True) if t == "NOT_FOUND"]
                log.warning("ur emulator: unknown RTDE outputs %s", missing)
            self._send(client, kind, struct.pack(">B", 1) + ",".join(types).encode())
        elif kind == RTDE_CONTROL_PACKAGE_SETUP_INPUTS:
            names = [n for n in body.decode().split(",") if n]
            types = [INPUT_TYPES.get(n, "NOT_FOUND") for n in names]
            recipe = len(client.inputs) + 1
            if "NOT_FOUND" not in types:
                client.inputs[recipe] = names
            else:
                recipe = 0
            self._send(client, kind, struct.pack(">B", recipe) + ",".join(types).encode())
        elif kind == RTDE_CONTROL_PACKAGE_START:
            client.next_due = time.monotonic()
            client.started = bool(client.output_names) or bool(client.inputs)
            self._send(client, kind, struct.pack(">B", 1))
        elif kind == RTDE_CONTROL_PACKAGE_PAUSE:
            client.started = False
            self._send(client, kind, struct.pack(">B", 1))
        elif kind == RTDE_DATA_PACKAGE:
            self._rtde_input(client, body)
        elif kind == RTDE_TEXT_MESSAGE:
            pass
        else:
            log.warning("ur emulator: unknown RTDE message %d", kind)

    def _rtde_input(self, client: _Client, body: bytes) -> None:
        recipe = body[0]
        names = client.inputs.get(recipe)
        if names is None:
            return
        offset = 1
        values: dict[str, Any] = {}
        for name in names:
            fmt = _FORMATS[INPUT_TYPES[name]]
            n = struct.calcsize(fmt)
            if offset + n > len(body):
                return  # a short package is dropped whole, as the controller does
            unpacked = struct.unpack(fmt, body[offset : offset + n])
            values[name] = unpacked if len(unpacked) > 1 else unpacked[0]
            offset += n
        with self.lock:
            for name, value in values.items():
                if name.startswith("input_int_register_"):
                    self.in_int[int(name.rsplit("_", 1)[1])] = int(value)
                elif name.startswith("input_double_register_"):
                    self.in_double[int(name.rsplit("_", 1)[1])] = float(value)
            if "tool_digital_output_mask" in values and "tool_digital_output" in values:
                mask = values["tool_digital_output_mask"]
                self.tool_out = (self.tool_out & ~mask) | (values["tool_digital_output"] & mask)
            if "standard_digital_output_mask" in values and "standard_digital_output" in values:
                mask = values["standard_digital_output_mask"]
                self.std_out = (self.std_out & ~mask) | (values["standard_digital_output"] & mask)
            if values.get("speed_slider_mask"):
                self.speed_slider = float(values.get("speed_slider_fraction", 1.0))

    def _outputs(self, now: float) -> dict[str, Any]:
        """The values of the output variables this cycle (under `lock`)."""
        safety_bits = 0
        if self.safety_mode == NORMAL:
            safety_bits |= 1 << 0
        if self.safety_mode == PROTECTIVE_STOP:
            safety_bits |= 1 << 2 | 1 << 10
        if self.safety_mode == ROBOT_EMERGENCY_STOP:
            safety_bits |= 1 << 6 | 1 << 7 | 1 << 10
        status_bits = 0
        if self.robot_mode in (IDLE, RUNNING, 4):
            status_bits |= 1 << 0
        if self.program_running:
            status_bits |= 1 << 1
        digital_out = (self.tool_out & 0x3) << 16 | (self.std_out & 0xFFFF)
        tcp_speed = np.zeros(6)
        return {
            "timestamp": now - self.t0,
            "actual_q": self.q,
            "target_q": self.q_target if self.motion != "idle" else self.q,
            "actual_qd": self.qd,
            "target_qd": self.qd,
            "actual_TCP_pose": self.tcp,
            "target_TCP_pose": self.tcp,
            "actual_TCP_speed": tcp_speed,
            "target_TCP_speed": tcp_speed,
            "robot_mode": self.robot_mode,
            "safety_mode": self.safety_mode,
            "safety_status": self.safety_mode,
            "joint_mode": (253,) * 6 if self.robot_mode == RUNNING else (236,) * 6,
            "safety_status_bits": safety_bits,
            "robot_status_bits": status_bits,
            "runtime_state": PLAYING if self.program_running else STOPPED,
            "actual_digital_output_bits": digital_out,
            "speed_scaling": 1.0,
            "target_speed_fraction": self.speed_slider,
            "actual_main_voltage": 48.0,
            "actual_robot_voltage": 48.0 if self.robot_mode != POWER_OFF else 0.0,
            "actual_joint_voltage": (48.0,) * 6,
            "joint_temperatures": (32.0,) * 6,
            "actual_execution_time": 0.1,
            "tool_output_voltage": 24,
            "tool_temperature": 30.0,
            "tool_mode": 255,
        }

    def _package(self, client: _Client, values: dict[str, Any]) -> bytes:
        parts = [b"\x01"]
        for name in client.output_names:
            kind = OUTPUT_TYPES.get(name)
            if kind is None:
                continue
            if name.startswith("output_int_register_"):
                value: Any = self.out_int[int(name.rsplit("_", 1)[1])]
            elif name.startswith("output_double_register_"):
                value = self.out_double[int(name.rsplit("_", 1)[1])]
            elif name.startswith("input_int_register_"):
                value = self.in_int[int(name.rsplit("_", 1)[1])]
            elif name.startswith("input_double_register_"):
                value = self.in_double[int(name.rsplit("_", 1)[1])]
            else:
                value = values.get(name)
            fmt = _FORMATS[kind]
            count = int(fmt[1]) if fmt[1].isdigit() else 1
            if value is None:
                value = (0,) * count if count > 1 else 0
            if count > 1:
                parts.append(struct.pack(fmt, *(np.asarray(value).tolist())))
            else:
                parts.append(struct.pack(fmt, value))
        return b"".join(parts)

    # --- the control cycle -------------------------------------------------------------------
    def _control_loop(self) -> None:
        period = 1.0 / CONTROL_HZ
        next_tick = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            if now < next_tick:
                time.sleep(next_tick - now)
                continue
            next_tick = max(next_tick + period, now - period)
            with self.lock:
                self._run_program()
                self._step(period)
                values = self._outputs(now)
                due = [c for c in self.clients if c.started and c.alive and now >= c.next_due]
                packages = []
                for client in due:
                    client.next_due = max(client.next_due + client.output_period, now)
                    packages.append((client, self._package(client, values)))
            for client, payload in packages:
                self._send(client, RTDE_DATA_PACKAGE, payload)

    def _step(self, dt: float) -> None:
        """Advance the joints one controller cycle: a move follows its interpolated path; servo
        and speed targets are tracked at no more than the joints' top speed."""
        if self.robot_mode != RUNNING or self.safety_mode != NORMAL:
            self.qd = np.zeros(6)
            return
        if self.motion == "move":
            self.move_elapsed += dt
            s = min(1.0, self.move_elapsed / self.move_duration)
            q = self.move_from + (self.q_target - self.move_from) * s
            if s >= 1.0:
                self.motion = "idle"
        else:
            if self.motion == "speed":
                self.q_target = self.q + self.speed_target * dt
            limit = MAX_JOINT_SPEED * dt
            q = self.q + np.clip(self.q_target - self.q, -limit, limit)
        self.qd = (q - self.q) / dt
        self.q = q
        self.tcp = forward_kinematics(self.q)

    # --- the control script's command handling ----------------------------------------------
    def _reg(self, i: int) -> float:
        return self.in_double[self.reg_offset + i]

    def _regs(self, start: int, n: int = 6) -> np.ndarray:
        return np.array([self._reg(start + k) for k in range(n)])

    def _run_program(self) -> None:
        """One cycle of the main loop of ur_rtde's control script: real-time commands (servo,
        speed, ...) are taken every cycle and leave the script ready for the next; any other
        command runs once, to completion, and is then acknowledged with "done" until the client
        clears the command register (NO_CMD), which makes the script ready again."""
        if not self.program_running:
            return
        if self.safety_mode != NORMAL or self.robot_mode != RUNNING:
            # A protective or emergency stop ends the program, as on the controller.
            self._halt_program()
            return
        off = self.reg_offset
        if self.blocking_move:
            if self.motion == "move":
                return  # the script is inside movej/movel until the arm arrives
            self.blocking_move = False
            self.out_int[off] = DONE_WITH_CMD
            return
        cmd = self.in_int[off]
        if cmd in REALTIME_CMDS:
            self._count(cmd)
            self._execute(cmd)
            self.out_int[off] = READY_FOR_CMD
        elif cmd == CMD["NO_CMD"]:
            self.executing = False
            self.out_int[off] = READY_FOR_CMD
        elif not self.executing:
            self.executing = True
            self._count(cmd)
            if cmd == CMD["STOP_SCRIPT"]:
                self._halt_program()
                return
            if self._execute(cmd):
                self.blocking_move = True
            else:
                self.out_int[off] = DONE_WITH_CMD

    def _count(self, cmd: int) -> None:
        name = CMD_NAMES.get(cmd, str(cmd))
        self.commands[name] = self.commands.get(name, 0) + 1

    def _execute(self, cmd: int) -> bool:
        """Run one command; True when the script waits for the motion to finish."""
        off = self.reg_offset
        if cmd == CMD["SERVOJ"]:
            self.q_target = self._regs(0)
            self.motion = "servo"
        elif cmd == CMD["SERVOL"]:
            q, ok = inverse_kinematics(self._regs(0), self.q_target)
            if ok:
                self.q_target = q
            self.motion = "servo"
        elif cmd in (CMD["SPEEDJ"], CMD["SPEEDL"]):
            qd = self._regs(0)
            if cmd == CMD["SPEEDL"]:
                J = _jacobian(_frames(self.q))
                qd = np.linalg.solve(J.T @ J + 1e-4 * np.eye(6), J.T @ qd)
            self.speed_target = np.clip(qd, -MAX_JOINT_SPEED, MAX_JOINT_SPEED)
            self.motion = "speed"
        elif cmd in (CMD["SERVO_STOP"], CMD["SPEED_STOP"], CMD["STOPJ"], CMD["STOPL"]):
            self.q_target = self.q.copy()
            self.motion = "idle"
        elif cmd in (CMD["MOVEJ"], CMD["MOVEJ_IK"], CMD["MOVEL"], CMD["MOVEL_FK"]):
            # movej: joint speed in rad/s; movel: tool speed in m/s. Both are interpolated
            # linearly in joint space (movel's straight tool path is not reproduced).
            if cmd in (CMD["MOVEJ_IK"], CMD["MOVEL"]):
                q, ok = inverse_kinematics(self._regs(0), self.q)
                if not ok:
                    return False
            else:
                q = self._regs(0)
            speed = max(self._reg(6), 1e-3)
            if cmd in (CMD["MOVEL"], CMD["MOVEL_FK"]):
                distance = float(np.linalg.norm(forward_kinematics(q)[:3] - self.tcp[:3]))
            else:
                distance = float(np.max(np.abs(q - self.q)))
            fastest = float(np.max(np.abs(q - self.q))) / MAX_JOINT_SPEED
            self.move_from = self.q.copy()
            self.q_target = q
            self.move_duration = max(distance / speed, fastest, 1.0 / CONTROL_HZ)
            self.move_elapsed = 0.0
            self.motion = "move"
            return self.in_int[off + 1] == 0  # an async move returns at once
        elif (
            cmd == CMD["GET_INVERSE_KINEMATICS_ARGS"]
            or cmd == CMD["GET_INVERSE_KINEMATICS_DEFAULT"]
        ):
            near = self._regs(6) if cmd == CMD["GET_INVERSE_KINEMATICS_ARGS"] else self.q
            q, _ = inverse_kinematics(self._regs(0), near)
            self.out_double[off : off + 6] = q.tolist()
        elif cmd in (
            CMD["GET_FORWARD_KINEMATICS_DEFAULT"],
            CMD["GET_FORWARD_KINEMATICS_ARGS"],
        ):
            q = self._regs(0) if cmd == CMD["GET_FORWARD_KINEMATICS_ARGS"] else self.q
            self.out_double[off : off + 6] = forward_kinematics(q).tolist()
        elif cmd == CMD["GET_ACTUAL_TOOL_FLANGE_POSE"] or cmd == CMD["GET_TARGET_WAYPOINT"]:
            self.out_double[off : off + 6] = self.tcp.tolist()
        elif cmd == CMD["GET_TCP_OFFSET"]:
            self.out_double[off : off + 6] = [0.0] * 6
        elif cmd == CMD["IS_STEADY"]:
            self.out_int[off + 1] = int(np.max(np.abs(self.qd)) < 1e-3)
        elif cmd in (
            CMD["IS_POSE_WITHIN_SAFETY_LIMITS"],
            CMD["IS_JOINTS_WITHIN_SAFETY_LIMITS"],
            CMD["GET_INVERSE_KINEMATICS_HAS_SOLUTION_DEFAULT"],
            CMD["GET_INVERSE_KINEMATICS_HAS_SOLUTION_ARGS"],
        ):
            self.out_int[off + 1] = 1
        elif cmd == CMD["GET_STEPTIME"]:
            self.out_double[off] = 1.0 / CONTROL_HZ
        elif cmd == CMD["PROTECTIVE_STOP"]:
            self.protective_stop()
        elif cmd == CMD["SET_TOOL_DIGITAL_OUT"]:
            pass  # set through rtde_io's tool_digital_output recipe instead
        return False

    # --- faults, for tests and the command line --------------------------------------------
    def protective_stop(self) -> None:
        """What a collision or a limit violation does: the arm stops, the program ends."""
        with self.lock:
            self.safety_mode = PROTECTIVE_STOP
            self.stopped_at = time.monotonic()
            self.popup = True
            self._halt_program()

    def emergency_stop(self) -> None:
        """The pendant's e-stop button: stop, power off, program ended."""
        with self.lock:
            self.estop_pressed = True
            self.safety_mode = ROBOT_EMERGENCY_STOP
            self.popup = True
            self._halt_program()
            self.robot_mode = POWER_OFF

    def release(self) -> None:
        """Twist the e-stop button out; the arm stays powered off until 'power on' and
        'brake release' (dashboard or pendant)."""
        with self.lock:
            self.estop_pressed = False
            if self.safety_mode == ROBOT_EMERGENCY_STOP:
                self.safety_mode = NORMAL

    def drop_connections(self, corrupt: bool = False) -> None:
        """The network fails mid-session: the controller stops listening and resets every open
        connection (TCP RST, no goodbye), as when a switch dies; unlike `kill`, the emulator
        lives on, so its state can still be read. With `corrupt`, every RTDE client first gets
        a data package cut off after its 3-byte header (no recipe id, no values), the kind of
        garbage a failing link delivers last; ur_rtde 1.6's receive thread reads past it and
        crashes the process it runs in with SIGSEGV."""
        for srv in self.sockets:
            with contextlib.suppress(OSError):
                srv.close()
        with self.lock:
            clients = {c.sock: c for c in self.clients}
            connections = list(self.connections)
        for conn in connections:
            client = clients.get(conn)
            lock = client.send_lock if client is not None else contextlib.nullcontext()
            with lock, contextlib.suppress(OSError):
                if corrupt and client is not None:
                    conn.sendall(struct.pack(">HB", 3, RTDE_DATA_PACKAGE))
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
            if client is not None:
                client.alive = False

    def snapshot(self) -> dict[str, Any]:
        """The controller's state, for tests."""
        with self.lock:
            return {
                "q": self.q.tolist(),
                "q_target": self.q_target.tolist(),
                "tcp": self.tcp.tolist(),
                "robot_mode": self.robot_mode,
                "safety_mode": self.safety_mode,
                "program_running": self.program_running,
                "tool_digital_out": self.tool_out,
                "rtde_clients": len(self.clients),
                "commands": dict(self.commands),
            }

    def set_joints(self, q: list[float]) -> None:
        with self.lock:
            self.q = np.asarray(q, dtype=np.float64)
            self.q_target = self.q.copy()
            self.tcp = forward_kinematics(self.q)


# --- child process and its Python handle ---------------------------------------------------------
def serve(host: str, *, control: bool = False, **options: Any) -> None:
    """Run a controller on `host` until interrupted. With `control`, the process is driven
    through stdin/stdout by `URControllerEmulator`: the first line out says whether the ports
    were bound, then every line in is a JSON call {"method", "args"} answered by one JSON line
    {"ok": result} or {"error": message}; end of input (the parent went away) stops it."""
    controller = Controller(host, **options)
    try:
        controller.bind()
    except OSError as e:
        if not control:
            raise
        _reply({"error": f"{type(e).__name__}: {e}"})
        return
    controller.start()
    if not control:
        with contextlib.suppress(KeyboardInterrupt):
            while not controller.stop.is_set():
                time.sleep(0.2)
        controller.close()
        return
    calls: dict[str, Callable[..., Any]] = {
        "protective_stop": controller.protective_stop,
        "emergency_stop": controller.emergency_stop,
        "release": controller.release,
        "state": controller.snapshot,
        "set_joints": controller.set_joints,
        "dashboard": controller.dashboard,
        "drop_connections": controller.drop_connections,
    }
    _reply({"ok": host})
    try:
        for line in sys.stdin:
            try:
                call = json.loads(line)
                method, args = call["method"], call.get("args", [])
            except (ValueError, KeyError, TypeError):
                _reply({"error": f"bad control line {line.strip()[:80]!r}"})
                continue
            if method == "close":
                _reply({"ok": None})
                break
            try:
                _reply({"ok": calls[method](*args)})
            except Exception as e:
                _reply({"error": f"{type(e).__name__}: {e}"})
    finally:
        controller.close()


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def free_loopback_host() -> str:
    """A random 127.x.y.z address: every emulator gets its own, so fixed ports never clash."""
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(2, 254)}"


class URControllerEmulator:
    """A UR controller emulator in a child process (`python -m robots.emulators.ur_controller
    --control`), reachable at `host`: a fresh random loopback address unless one is given.

    `kill()` sends SIGKILL, so the sockets vanish the way they do when a controller loses power
    or its cable is pulled; `close()` shuts it down cleanly. The child also stops by itself when
    this process goes away (its stdin closes)."""

    def __init__(self, host: str | None = None, *, unlock_delay: float = 5.0) -> None:
        self.requested_host = host
        self.unlock_delay = float(unlock_delay)
        self.host = host or ""
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def start(self, timeout: float = 20.0) -> URControllerEmulator:
        """Start the child and wait until every port accepts connections."""
        deadline = time.monotonic() + timeout
        last_error = ""
        for _ in range(5):
            host = self.requested_host or free_loopback_host()
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "robots.emulators.ur_controller",
                    "--host",
                    host,
                    "--unlock-delay",
                    str(self.unlock_delay),
                    "--control",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=str(Path(__file__).resolve().parents[2]),
            )
            self._proc = proc
            try:
                answer = self._read(max(0.1, deadline - time.monotonic()))
            except RuntimeError as e:
                answer = {"error": str(e)}
            if "ok" in answer:
                self.host = host
                self._wait_ports(deadline)
                return self
            last_error = str(answer.get("error"))
            self.kill()
            self._proc = None
            if self.requested_host:
                break
        raise RuntimeError(f"UR controller emulator did not start: {last_error}")

    def _read(self, timeout: float) -> dict[str, Any]:
        proc = self._proc
        if proc is None or proc.stdout is None:
            raise RuntimeError("the UR controller emulator is not running")
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            raise RuntimeError(f"the UR controller emulator did not answer within {timeout:.1f} s")
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the UR controller emulator exited")
        return json.loads(line)

    def _wait_ports(self, deadline: float) -> None:
        for port in (DASHBOARD_PORT, RTDE_PORT, *SCRIPT_PORTS):
            while True:
                try:
                    with socket.create_connection((self.host, port), timeout=0.5):
                        break
                except OSError as e:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"emulator port {self.host}:{port} never opened") from e
                    time.sleep(0.02)

    def _call(self, method: str, *args: Any, timeout: float = 5.0) -> Any:
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None or proc.stdin is None:
                raise RuntimeError("the UR controller emulator is not running")
            proc.stdin.write(json.dumps({"method": method, "args": list(args)}) + "\n")
            proc.stdin.flush()
            answer = self._read(timeout)
        if "error" in answer:
            raise RuntimeError(f"emulator {method}: {answer['error']}")
        return answer["ok"]

    def protective_stop(self) -> None:
        """What a collision does: the arm stops and ur_rtde's control script ends."""
        self._call("protective_stop")

    def emergency_stop(self) -> None:
        """Press the e-stop: the arm stops and powers off, the script ends."""
        self._call("emergency_stop")

    def release(self) -> None:
        """Release the e-stop button (the arm then needs power on and brake release)."""
        self._call("release")

    def state(self) -> dict[str, Any]:
        """Joints ("q"), TCP pose ("tcp"), modes, program, tool output and a count of the
        commands the control script ran, as the controller sees them."""
        return self._call("state")

    def set_joints(self, q: Any) -> None:
        self._call("set_joints", [float(v) for v in q])

    def dashboard(self, command: str) -> str:
        """What the dashboard server answers to `command` (without opening a connection)."""
        return self._call("dashboard", command)

    def drop_connections(self, corrupt: bool = False) -> None:
        """The network fails: every connection is reset and no new one is accepted; with
        `corrupt`, a truncated RTDE package comes first (see `Controller.drop_connections`)."""
        self._call("drop_connections", corrupt)

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the controller: its connections drop without a goodbye."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5.0)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def close(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(Exception):
                self._call("close", timeout=3.0)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=3.0)
        self.kill()
        self._proc = None

    def __enter__(self) -> URControllerEmulator:
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m robots.emulators.ur_controller",
        description="Emulate a UR5e controller (RTDE, dashboard, script ports) on a loopback "
        "address, for trying the UR driver without an arm.",
    )
    parser.add_argument("--host", default="127.0.0.2", help="loopback address to bind")
    parser.add_argument(
        "--unlock-delay",
        type=float,
        default=5.0,
        help="seconds after a protective stop before it can be unlocked (e-Series: 5)",
    )
    parser.add_argument("--script-log", help="append every script received to this file")
    parser.add_argument(
        "--control", action="store_true", help="take JSON calls on stdin (URControllerEmulator)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        if not ipaddress.ip_address(args.host).is_loopback:
            raise ValueError
    except ValueError:
        parser.error(f"--host must be a loopback address (127.x.y.z), not {args.host}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if not args.control:
        print(
            f"UR5e controller emulator on {args.host} (ports 29999, 30001-30004); "
            f"drive it with --robot ur:{args.host}; Ctrl-C stops it",
            file=sys.stderr,
        )
    serve(
        args.host, control=args.control, unlock_delay=args.unlock_delay, script_log=args.script_log
    )


if __name__ == "__main__":
    main()
