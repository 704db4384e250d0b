"""Keyboard teleoperation through pynput's X11 listener.

The listener records keys at the X server (the RECORD extension), so the arm follows the
keyboard whatever window has the focus: the operator can watch a camera view while driving.
That also means keys typed anywhere in the same X session move the arm while this runs.
Under Wayland only X (XWayland) clients' keys are seen.

Default key map (velocity while held, events on press):

    w / s        +x / -x            enter      start, then stop and save (alternates)
    a / d        +y / -y            backspace  discard the episode
    r / f        +z / -z            y          mark success
    page_up/down +roll / -roll      i          intervene (toggle)
    up / down    +pitch / -pitch    esc        emergency stop
    left / right +yaw / -yaw        x          reset the emergency stop
    space        gripper: toggles closed / open on each press
    q            quit
    t            type a line of text, where the session reads one (see below)

Space toggles the gripper rather than closing it while held: a grasp lasts through a long carry
and holding one more key while steering with others is error-prone. Bind a key to
"gripper_hold" instead to close only while it is held.

Typing: where the session asks for text (`enable_typing`, as `il deploy --correct` does to take
a phrase), t begins a line: every key is then a letter, not a command, and no key moves the
arm, until Enter hands the line over (`TeleopState.typed`; an empty line too) or Esc drops it.
A key bound to the emergency stop (Esc by default) stops the arm while typing as at any other
time. Without that request, t does nothing.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from robots.base import DriverError, Teleop, TeleopState
from robots.teleop._common import (
    BUTTON_ACTIONS,
    MOTION_ACTIONS,
    TWIST_NAMES,
    Controls,
    check_action,
    check_number,
    twist_from,
)

__all__ = ["DEFAULT_KEYS", "TYPE", "KeyboardTeleop"]

log = logging.getLogger(__name__)

# Key names are pynput's: a character ("w", "y") or a `pynput.keyboard.Key` name ("enter").
DEFAULT_KEYS: dict[str, str] = {
    "w": "+vx",
    "s": "-vx",
    "a": "+vy",
    "d": "-vy",
    "r": "+vz",
    "f": "-vz",
    "page_up": "+wx",
    "page_down": "-wx",
    "up": "+wy",
    "down": "-wy",
    "left": "+wz",
    "right": "-wz",
    "space": "gripper",
    "enter": "start_stop",
    "backspace": "discard",
    "y": "success",
    "i": "intervene",
    "esc": "estop",
    "x": "reset",
    "q": "quit",
    "t": "type",
}
TYPE = "type"
"""The action of the key that begins a line of text (where the session reads one)."""

_VK = re.compile(r"^<\d+>$")  # a key without a character or name, by its virtual key code
_NO_DISPLAY_HINT = (
    "run it in a desktop session, or start a virtual X server "
    "(Xvfb :1 +extension RECORD &) and export DISPLAY=:1"
)


def key_name(key: Any) -> str | None:
    """The map name of a pynput key: special keys by their `Key` name, characters lower-cased
    so that Shift or Caps Lock do not change what a key does."""
    if isinstance(key, enum.Enum):  # pynput.keyboard.Key
        return key.name
    char = getattr(key, "char", None)
    if char:
        return char.lower()
    vk = getattr(key, "vk", None)
    return f"<{vk}>" if vk is not None else None


def check_display() -> None:
    """Fail with what to do before pynput is imported: pynput picks its backend on import, so a
    first import without a display would leave it unusable for the rest of the process."""
    display = os.environ.get("DISPLAY", "")
    if not display:
        raise DriverError(
            f"keyboard teleop needs an X display but DISPLAY is not set: {_NO_DISPLAY_HINT}"
        )
    try:
        import Xlib.display
    except ImportError as e:
        raise DriverError(f"keyboard teleop needs pynput: pip install -e '.[teleop]' ({e})") from e
    try:
        connection = Xlib.display.Display(display)
    except Exception as e:
        raise DriverError(
            f"keyboard teleop cannot connect to the X display {display!r} ({e}); {_NO_DISPLAY_HINT}"
        ) from e
    try:
        has_record = connection.has_extension("RECORD")
    finally:
        connection.close()
    if not has_record:
        raise DriverError(
            f"the X display {display!r} lacks the RECORD extension the key listener needs; "
            "start Xvfb with +extension RECORD (Xorg has it by default)"
        )


class KeyboardTeleop(Teleop):
    """Drive the arm with held keys; see the module docstring for the default map.

    `keys` replaces the whole map (key name → action): motion actions are "+vx" ... "-wz";
    button actions are "gripper", "gripper_hold", "start_stop", "type" and every `TeleopEvent`
    value ("start", "stop", "discard", "success", "intervene", "estop", "reset", "quit"). A held
    key asks for `scale` (linear) or `rotation_scale` (angular) of the robot's top speed.
    """

    name = "keyboard"

    def __init__(
        self,
        keys: Mapping[str, str | None] | None = None,
        scale: float = 1.0,
        rotation_scale: float = 1.0,
    ) -> None:
        allowed = MOTION_ACTIONS | BUTTON_ACTIONS | {TYPE}
        chosen = DEFAULT_KEYS if keys is None else keys
        self.keys: dict[str, str] = {
            str(key).lower(): check_action(str(action), self.name, allowed, f"key {key!r}")
            for key, action in chosen.items()
            if action is not None
        }
        self.scale = check_number(scale, self.name, "scale", 0.0, 1.0)
        self.rotation_scale = check_number(rotation_scale, self.name, "rotation_scale", 0.0, 1.0)
        self._controls = Controls()
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._listener: Any = None
        self._display = ""
        self._typing_enabled = False
        self._typing: list[str] | None = None
        """The line being typed, a character per entry; None while not typing."""
        self._lines: list[str] = []
        """Lines entered since the last read."""

    @property
    def is_connected(self) -> bool:
        return self._listener is not None

    def enable_typing(self) -> bool:
        self._typing_enabled = True
        return True

    def connect(self) -> None:
        if self._listener is not None:
            return
        if sys.platform.startswith(("linux", "freebsd", "openbsd")):
            check_display()
        try:
            from pynput import keyboard
        except ImportError as e:  # pynput's message spans lines; keep the first
            reason = str(e).splitlines()[0]
            raise DriverError(f"keyboard teleop cannot load pynput: {reason}") from e
        named = set(keyboard.Key.__members__)
        unknown = sorted(k for k in self.keys if len(k) > 1 and k not in named and not _VK.match(k))
        if unknown:
            raise DriverError(
                f"keyboard: unknown key name(s) {', '.join(unknown)}; use a character or one of "
                + ", ".join(sorted(named))
            )
        listener = keyboard.Listener(on_press=self._on_press, on_release=self._on_release)
        listener.start()
        listener.wait()  # returns once the listener has created its X recording
        self._listener = listener
        self._display = os.environ.get("DISPLAY", "")
        self._wait_recording(listener)
        log.debug("keyboard teleop listening on %s", self._display)

    def disconnect(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        listener.stop()
        # pynput asks the server to end the recording on the connection its thread is blocked
        # reading, so the thread only wakes at the next key event; ending it from a second
        # connection makes the server answer at once. pynput reports itself ready just before
        # it enables the recording, so a disable can arrive first and do nothing: repeat it
        # until the thread has ended (bounded).
        context = getattr(listener, "_context", None)
        deadline = time.monotonic() + 5.0
        while context is not None and listener.is_alive() and time.monotonic() < deadline:
            if not self._end_recording(context):
                break
            listener.join(timeout=0.1)
        listener.join(timeout=2.0)
        with self._lock:
            self._held.clear()
            self._typing, self._lines = None, []

    def _wait_recording(self, listener: Any, timeout: float = 5.0) -> None:
        """Return once the X server records for `listener`. pynput reports itself ready just
        before it enables the recording, and keys pressed in between are lost; on Linux, ask
        the server until it says the context is enabled (bounded)."""
        context = getattr(listener, "_context", None)
        if context is None or not sys.platform.startswith(("linux", "freebsd", "openbsd")):
            return
        try:
            import Xlib.display

            connection = Xlib.display.Display(self._display)
        except Exception as e:
            log.debug("keyboard teleop: cannot ask whether the X recording runs: %s", e)
            return
        try:
            opcode = connection.display.get_extension_major("RECORD")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and listener.is_alive():
                if _record_context_enabled(connection, opcode, context):
                    return
                time.sleep(0.005)
            log.debug("keyboard teleop: the X recording did not start within %.0f s", timeout)
        except Exception as e:
            log.debug("keyboard teleop: cannot ask whether the X recording runs: %s", e)
        finally:
            connection.close()

    def _end_recording(self, context: Any) -> bool:
        """Disable the X recording `context` from a connection of our own; False where the
        display cannot be reached (then the listener's thread ends by itself)."""
        try:
            import Xlib.display

            connection = Xlib.display.Display(self._display)
            try:
                connection.record_disable_context(context)
                connection.flush()
            finally:
                connection.close()
        except Exception as e:
            log.debug("keyboard teleop: could not end the X recording: %s", e)
            return False
        return True

    def _on_press(self, key: Any) -> None:
        name = key_name(key)
        action = self.keys.get(name) if name is not None else None
        with self._lock:
            if self._typing is not None:
                if name in self._held:  # the auto-repeat of a key held since before typing
                    return
                if action != "estop":
                    self._type(key)
                    return
                self._typing = None  # the emergency stop works while typing, and ends it
            if action is None:
                return
            if name in self._held:  # X auto-repeat: presses without releases while held
                return
            self._held.add(name)
            if action == TYPE:
                if self._typing_enabled:
                    self._typing = []
                return
        if action in BUTTON_ACTIONS:
            self._controls.press(action, source=name)

    def _type(self, key: Any) -> None:
        """One key of the line being typed (the lock is held): characters and space add to it,
        Backspace takes one back, Enter hands it over, Esc drops it; other keys do nothing."""
        assert self._typing is not None
        special = key.name if isinstance(key, enum.Enum) else None
        if special == "enter":
            self._lines.append("".join(self._typing))
            self._typing = None
        elif special == "esc":
            self._typing = None
        elif special == "backspace":
            if self._typing:
                self._typing.pop()
        elif special == "space":
            self._typing.append(" ")
        elif special is None:
            char = getattr(key, "char", None)
            if char and char.isprintable():
                self._typing.append(char)

    def _on_release(self, key: Any) -> None:
        name = key_name(key)
        action = self.keys.get(name) if name is not None else None
        if action is None:
            return
        with self._lock:
            self._held.discard(name)
        if action in BUTTON_ACTIONS:
            self._controls.release(action, source=name)

    def read(self) -> TeleopState:
        listener = self._listener
        if listener is None:
            raise DriverError("keyboard teleop is not connected: call connect() first")
        if not listener.is_alive():
            raise DriverError(
                "keyboard teleop: the key listener stopped (X display closed?); reconnect"
            )
        now = time.time()
        motion = np.zeros(len(TWIST_NAMES))
        with self._lock:
            typing = None if self._typing is None else "".join(self._typing)
            # while typing, keys are letters: none moves the arm, not even one held before
            held = [self.keys[name] for name in self._held] if typing is None else []
            lines, self._lines = self._lines, []
        for action in held:
            if action in MOTION_ACTIONS:
                motion[TWIST_NAMES.index(action[1:])] += 1.0 if action[0] == "+" else -1.0
        state = self._controls.state(twist_from(motion, self.scale, self.rotation_scale), now)
        state.typed, state.typing = lines, typing
        return state


def _record_context_enabled(connection: Any, opcode: int, context: int) -> bool:
    """RECORD's GetContext, whose reply says whether the context is enabled: python-xlib's own
    request of that name drops that byte (and fails to parse the client list)."""
    from Xlib.ext import record
    from Xlib.protocol import rq

    class GetContext(rq.ReplyRequest):
        _request = record.GetContext._request
        _reply = rq.Struct(
            rq.ReplyCode(),
            rq.Card8("enabled"),
            rq.Card16("sequence_number"),
            rq.ReplyLength(),
            rq.Card8("element_header"),
            rq.Pad(3),
            rq.Card32("clients"),  # the client list after it is not needed (nor parsed)
            rq.Pad(16),
        )

    reply = GetContext(display=connection.display, opcode=opcode, context=context)
    return bool(reply.enabled)
