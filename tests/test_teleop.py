"""Teleop backends against the real libraries and virtual devices.

keyboard: pynput's X11 listener on a private Xvfb server, keys typed by xdotool.
gamepad: pygame on SDL2's own virtual joystick, driven through SDL's C API (ctypes).
spacemouse: pyspacemouse and easyhid reading recorded SpaceMouse HID reports from a byte-level
stand-in for the hidapi C library (the one layer below easyhid), so report parsing is real.

Every wait is a bounded poll: a broken device fails the test in seconds, never hangs it.
"""

from __future__ import annotations

import ctypes
import os
import re
import select
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from robots.base import ActionSpec, DriverError, Teleop, TeleopEvent, TeleopState, to_robot_action
from robots.teleop import GamepadTeleop, KeyboardTeleop, SpaceMouseTeleop, make_teleop
from robots.teleop import gamepad as gamepad_module
from robots.teleop import keyboard as keyboard_module
from robots.teleop import spacemouse as spacemouse_module

ROOT = Path(__file__).resolve().parents[1]
E = TeleopEvent


def poll(
    teleop: Teleop,
    until: Callable[[TeleopState, list[TeleopEvent]], bool],
    timeout: float = 3.0,
) -> tuple[TeleopState, list[TeleopEvent]]:
    """Read until `until(state, events so far)` holds; events of every read are collected."""
    events: list[TeleopEvent] = []
    deadline = time.monotonic() + timeout
    while True:
        state = teleop.read()
        events.extend(state.events)
        if until(state, events):
            return state, events
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout} s: last action {state.action}, events {events}"
            )
        time.sleep(0.005)


def quiet_for(teleop: Teleop, seconds: float = 0.15) -> list[TeleopEvent]:
    """Events that arrive over `seconds` of reads (expected: none)."""
    events: list[TeleopEvent] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        events.extend(teleop.read().events)
        time.sleep(0.01)
    return events


def twist(state: TeleopState) -> np.ndarray:
    return state.action[:6]


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message, f"not a one-line message: {message!r}"
    return message


# --- keyboard: pynput on Xvfb, keys from xdotool ----------------------------------------------
def start_xvfb(*extension_flags: str) -> tuple[subprocess.Popen, str]:
    """An Xvfb on a display number it picks itself (-displayfd), so parallel runs never clash."""
    for binary in ("Xvfb", "xdotool"):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} is not installed (apt-get install xvfb xdotool; `make setup`)")
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        [
            *("Xvfb", "-displayfd", str(write_fd), "-screen", "0", "640x480x24"),
            # -noreset: the server otherwise resets whenever its last client leaves, and
            # refuses connections meanwhile (between one test's teleop and the next).
            *("-noreset", "-nolisten", "tcp", *extension_flags),
        ],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    number = b""
    deadline = time.monotonic() + 10.0
    try:
        while not number.endswith(b"\n"):
            ready, _, _ = select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(read_fd, 16) if ready else b""
            if not chunk:
                proc.kill()
                raise RuntimeError("Xvfb did not report its display within 10 s")
            number += chunk
    finally:
        os.close(read_fd)
    return proc, f":{int(number)}"


def stop_xvfb(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@pytest.fixture(scope="module")
def xvfb():
    proc, display = start_xvfb("+extension", "RECORD")
    yield display
    stop_xvfb(proc)


@pytest.fixture
def x_display(xvfb, monkeypatch):
    monkeypatch.setenv("DISPLAY", xvfb)
    return xvfb


def xdotool(display: str, *args: str) -> None:
    subprocess.run(
        ["xdotool", *args], env={**os.environ, "DISPLAY": display}, check=True, timeout=5
    )


@pytest.fixture
def keyboard(x_display):
    teleop = KeyboardTeleop()
    teleop.connect()
    yield teleop
    listener = teleop._listener
    teleop.disconnect()
    listener.join(timeout=10.0)  # a bounded wait: a listener that never stops fails here
    assert not listener.is_alive(), "the key listener did not stop"


def test_keyboard_held_keys_make_the_twist(keyboard, x_display):
    state = keyboard.read()
    assert not state.active and not state.events
    assert np.array_equal(state.action, [0, 0, 0, 0, 0, 0, -1])  # gripper starts open
    assert abs(state.timestamp - time.time()) < 1.0

    xdotool(x_display, "keydown", "w")
    state, _ = poll(keyboard, lambda s, _: s.action[0] == 1.0)
    assert state.active
    assert np.array_equal(twist(state), [1, 0, 0, 0, 0, 0])

    xdotool(x_display, "keydown", "a")  # two keys at once: forward and left
    state, _ = poll(keyboard, lambda s, _: s.action[1] == 1.0)
    assert np.array_equal(twist(state), [1, 1, 0, 0, 0, 0])

    xdotool(x_display, "keydown", "s")  # opposite keys cancel
    state, _ = poll(keyboard, lambda s, _: s.action[0] == 0.0)
    assert np.array_equal(twist(state), [0, 1, 0, 0, 0, 0]) and state.active

    xdotool(x_display, "keyup", "w", "keyup", "s", "keyup", "a")
    state, _ = poll(keyboard, lambda s, _: not s.active)
    assert np.array_equal(twist(state), np.zeros(6))

    xdotool(x_display, "keydown", "Left", "keydown", "Page_Down", "keydown", "f")
    state, _ = poll(keyboard, lambda s, _: np.count_nonzero(twist(s)) == 3)
    assert np.array_equal(twist(state), [0, 0, -1, -1, 0, 1])  # down, -roll, +yaw
    xdotool(x_display, "keyup", "Left", "keyup", "Page_Down", "keyup", "f")
    poll(keyboard, lambda s, _: not s.active)


def test_keyboard_events_arrive_once_and_in_order(keyboard, x_display):
    # Typed in one burst, read over however many reads it takes.
    xdotool(x_display, "key", "Return", "BackSpace", "y", "i", "Escape", "x", "q")
    _, events = poll(keyboard, lambda _, ev: len(ev) >= 7)
    assert events == [E.START, E.DISCARD, E.SUCCESS, E.INTERVENE, E.ESTOP, E.RESET, E.QUIT]
    assert quiet_for(keyboard) == []

    # Enter alternates start and stop-and-save; capitals act as their lower-case key.
    xdotool(x_display, "key", "Return", "shift+y", "Return")
    _, events = poll(keyboard, lambda _, ev: len(ev) >= 3)
    assert events == [E.START, E.SUCCESS, E.STOP]
    assert quiet_for(keyboard) == []


def test_keyboard_gripper_toggles_and_auto_repeat_is_one_press(keyboard, x_display):
    xdotool(x_display, "key", "space")
    poll(keyboard, lambda s, _: s.action[6] == 1.0)
    xdotool(x_display, "key", "space")
    state, _ = poll(keyboard, lambda s, _: s.action[6] == -1.0)
    assert not state.active  # the gripper is not motion

    # Held past X's auto-repeat delay (660 ms by default) the key repeats; it is still one press.
    xdotool(x_display, "keydown", "Return")
    time.sleep(0.9)
    xdotool(x_display, "keyup", "Return")
    _, events = poll(keyboard, lambda _, ev: len(ev) >= 1)
    assert events + quiet_for(keyboard, 0.3) == [E.START]


def test_keyboard_says_while_a_gripper_key_is_held(keyboard, x_display):
    xdotool(x_display, "keydown", "space")
    state, _ = poll(keyboard, lambda s, _: s.gripper_held)
    assert state.action[6] == 1.0  # the press closed it
    xdotool(x_display, "keyup", "space")
    state, _ = poll(keyboard, lambda s, _: not s.gripper_held)
    assert state.action[6] == 1.0  # still closed: a toggle


def test_keyboard_types_a_line_only_where_the_session_reads_one(keyboard, x_display):
    xdotool(x_display, "key", "t", "keydown", "w")  # no one asked for text: t does nothing
    state, _ = poll(keyboard, lambda s, _: s.action[0] == 1.0)
    assert state.typing is None and state.typed == []
    xdotool(x_display, "keyup", "w")
    poll(keyboard, lambda s, _: not s.active)

    assert keyboard.enable_typing()
    xdotool(x_display, "key", "t")
    poll(keyboard, lambda s, _: s.typing == "")
    # every key is a letter now: q does not quit, Return does not start, w does not move
    xdotool(x_display, "type", "Go quickly wx")
    xdotool(x_display, "key", "BackSpace")
    state, events = poll(keyboard, lambda s, _: s.typing == "Go quickly w")
    assert not state.active and not state.typed
    xdotool(x_display, "key", "Return")
    state, more = poll(keyboard, lambda s, _: s.typed == ["Go quickly w"])
    assert state.typing is None and events + more + quiet_for(keyboard) == []

    xdotool(x_display, "key", "t", "key", "Return")  # an empty line is a line too
    poll(keyboard, lambda s, _: s.typed == [""])
    # the emergency stop stops the arm while typing, and drops the line
    xdotool(x_display, "key", "t", "key", "a", "key", "Escape")
    state, events = poll(keyboard, lambda _, ev: E.ESTOP in ev)
    assert events == [E.ESTOP] and state.typing is None and state.typed == []
    xdotool(x_display, "key", "x")  # and then x is the reset again, not a letter
    _, events = poll(keyboard, lambda _, ev: len(ev) >= 1)
    assert events == [E.RESET]


def test_keyboard_custom_key_map(x_display):
    teleop = KeyboardTeleop(keys={"k": "+vz", "m": "gripper_hold", "w": None}, scale=0.5)
    with teleop:
        xdotool(x_display, "keydown", "k", "keydown", "m", "keydown", "w")
        state, _ = poll(teleop, lambda s, _: s.action[2] != 0 and s.action[6] == 1.0)
        assert np.array_equal(state.action, [0, 0, 0.5, 0, 0, 0, 1])  # w is unbound
        xdotool(x_display, "keyup", "m", "keyup", "k", "keyup", "w")
        state, _ = poll(teleop, lambda s, _: not s.active and s.action[6] == -1.0)
        assert state.events == []


def test_keyboard_without_a_usable_display_says_what_to_do(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    with pytest.raises(DriverError) as error:
        KeyboardTeleop().connect()
    assert "DISPLAY is not set" in one_line(error) and "Xvfb" in str(error.value)

    monkeypatch.setenv("DISPLAY", ":4093")  # nothing listens there
    with pytest.raises(DriverError) as error:
        KeyboardTeleop().connect()
    assert "cannot connect to the X display ':4093'" in one_line(error)

    proc, display = start_xvfb("-extension", "RECORD")
    try:
        monkeypatch.setenv("DISPLAY", display)
        with pytest.raises(DriverError) as error:
            KeyboardTeleop().connect()
        assert "RECORD" in one_line(error)
    finally:
        stop_xvfb(proc)


def test_keyboard_rejects_an_unknown_action_or_key(x_display):
    with pytest.raises(DriverError) as error:
        KeyboardTeleop(keys={"w": "+vq"})
    assert "'+vq'" in one_line(error)
    with pytest.raises(DriverError) as error:
        KeyboardTeleop(keys={"entr": "start"}).connect()
    assert "unknown key name(s) entr" in one_line(error)


# --- gamepad: pygame on an SDL virtual joystick -----------------------------------------------
SDL_JOYSTICK_TYPE_GAMECONTROLLER = 1
SDL_HAT_UP, SDL_HAT_RIGHT = 0x01, 0x02


def sdl_library(pygame) -> ctypes.CDLL:
    """The SDL2 that pygame loaded (its bundled copy), not a system one: virtual joysticks
    live in that library's state."""
    library = re.compile(r"/libSDL2(-2\.0)?([-.]|$)")  # not SDL2_image, SDL2_mixer, ...
    paths: list[str] = []
    if Path("/proc/self/maps").exists():
        for line in Path("/proc/self/maps").read_text().splitlines():
            path = line.split(maxsplit=5)[-1] if len(line.split()) >= 6 else ""
            if library.search(path) and path not in paths:
                paths.append(path)
    package = Path(pygame.__file__).parent
    for folder in (package.parent / "pygame.libs", package / ".dylibs", package):
        paths.extend(str(p) for p in sorted(folder.glob("*SDL2*")) if library.search(str(p)))
    if not paths:
        pytest.skip("cannot find the SDL2 library pygame loaded")
    sdl = ctypes.CDLL(paths[0])
    if not hasattr(sdl, "SDL_JoystickAttachVirtual"):
        pytest.skip(f"pygame's SDL {pygame.get_sdl_version()} predates virtual joysticks (2.0.14)")
    sdl.SDL_JoystickAttachVirtual.argtypes = [ctypes.c_int] * 4
    sdl.SDL_JoystickAttachVirtual.restype = ctypes.c_int
    sdl.SDL_JoystickDetachVirtual.argtypes = [ctypes.c_int]
    sdl.SDL_JoystickOpen.argtypes = [ctypes.c_int]
    sdl.SDL_JoystickOpen.restype = ctypes.c_void_p
    sdl.SDL_JoystickClose.argtypes = [ctypes.c_void_p]
    sdl.SDL_JoystickSetVirtualAxis.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int16]
    sdl.SDL_JoystickSetVirtualButton.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint8]
    sdl.SDL_JoystickSetVirtualHat.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint8]
    sdl.SDL_GetError.restype = ctypes.c_char_p
    return sdl


class VirtualPad:
    """An Xbox-layout pad (6 axes, 11 buttons, 1 hat) that exists only inside SDL, numbered as
    Linux's xpad driver numbers a real one."""

    def __init__(self, sdl: ctypes.CDLL) -> None:
        self.sdl = sdl
        self.index = sdl.SDL_JoystickAttachVirtual(SDL_JOYSTICK_TYPE_GAMECONTROLLER, 6, 11, 1)
        assert self.index >= 0, sdl.SDL_GetError()
        self.handle = sdl.SDL_JoystickOpen(self.index)
        assert self.handle, sdl.SDL_GetError()
        # At rest as the Linux driver reports an Xbox pad: sticks centred (0, 1 left; 3, 4
        # right), triggers (2 left, 5 right) fully released.
        for axis, value in enumerate((0.0, 0.0, -1.0, 0.0, 0.0, -1.0)):
            self.axis(axis, value)
        self.update()

    def axis(self, axis: int, value: float) -> None:
        raw = int(np.clip(round(value * 32767), -32768, 32767)) if value > -1 else -32768
        assert self.sdl.SDL_JoystickSetVirtualAxis(self.handle, axis, raw) == 0

    def button(self, button: int, pressed: bool) -> None:
        assert self.sdl.SDL_JoystickSetVirtualButton(self.handle, button, int(pressed)) == 0

    def hat(self, hat: int, value: int) -> None:
        assert self.sdl.SDL_JoystickSetVirtualHat(self.handle, hat, value) == 0

    def update(self) -> None:
        """What SDL does on each event pump: turn the new state into queued events."""
        self.sdl.SDL_JoystickUpdate()

    def tap(self, button: int) -> None:
        # A virtual pad reports state, not edges: each half of the tap needs its own update.
        self.button(button, True)
        self.update()
        self.button(button, False)
        self.update()

    def detach(self) -> None:
        if self.handle:
            self.sdl.SDL_JoystickClose(self.handle)
            self.handle = None
            self.sdl.SDL_JoystickDetachVirtual(self.index)


@pytest.fixture
def pygame_sdl(monkeypatch):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    monkeypatch.setenv("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    import pygame

    pygame.joystick.init()  # owned by the test, so the pad outlives each GamepadTeleop
    yield pygame, sdl_library(pygame)
    pygame.joystick.quit()
    pygame.display.quit()


@pytest.fixture
def pad(pygame_sdl):
    pad = VirtualPad(pygame_sdl[1])
    yield pad
    pad.detach()


@pytest.fixture
def gamepad(pad):
    teleop = GamepadTeleop(index=pad.index)
    teleop.connect()
    yield teleop
    teleop.disconnect()


def test_gamepad_sticks_and_hat_make_the_twist(gamepad, pad):
    state = gamepad.read()
    assert not state.active and not state.events
    assert np.array_equal(state.action, [0, 0, 0, 0, 0, 0, -1])

    pad.axis(1, -1.0)  # left stick fully up: forward
    pad.axis(0, 0.55)  # left stick half right: -y, rescaled past the 0.1 dead zone
    pad.axis(4, -0.08)  # right stick barely up: inside the dead zone
    pad.axis(3, -1.0)  # right stick fully left: +yaw
    pad.hat(0, SDL_HAT_RIGHT)  # d-pad right: +roll
    state, _ = poll(gamepad, lambda s, _: s.action[0] == 1.0)
    assert state.active
    np.testing.assert_allclose(twist(state), [1, -0.5, 0, 1, 0, 1], atol=1e-4)

    pad.hat(0, SDL_HAT_UP)
    for axis in (0, 1, 3, 4):
        pad.axis(axis, 0.0)
    state, _ = poll(gamepad, lambda s, _: s.action[0] == 0.0 and s.action[4] == 1.0)
    np.testing.assert_allclose(twist(state), [0, 0, 0, 0, 1, 0])
    pad.hat(0, 0)
    state, _ = poll(gamepad, lambda s, _: not s.active)
    assert np.array_equal(twist(state), np.zeros(6))


def test_gamepad_buttons_accumulate_and_arrive_once_in_order(gamepad, pad):
    # Taps between two reads queue in SDL; one read returns them all, in order, once.
    for button in (7, 3, 2, 4, 5, 1, 6):  # Start Y X LB RB B Back
        pad.tap(button)
    state = gamepad.read()
    assert state.events == [
        E.START,
        E.SUCCESS,
        E.INTERVENE,
        E.ESTOP,
        E.RESET,
        E.DISCARD,
        E.QUIT,
    ]
    assert gamepad.read().events == []

    pad.tap(7)
    pad.tap(7)
    pad.tap(0)  # A toggles the gripper
    state = gamepad.read()
    assert state.events == [E.START, E.STOP] and state.action[6] == 1.0
    pad.tap(0)
    assert gamepad.read().action[6] == -1.0


def test_gamepad_trigger_drives_the_gripper(pad):
    with GamepadTeleop(index=pad.index, gripper_axis="a5") as teleop:
        pad.axis(5, -1.0)  # released
        poll(teleop, lambda s, _: s.action[6] == -1.0)
        pad.axis(5, 1.0)  # fully pulled
        state, _ = poll(teleop, lambda s, _: s.action[6] > 0.99)
        assert not state.active


def test_gamepad_unplugged_mid_session_is_an_error(gamepad, pad):
    gamepad.read()
    pad.detach()
    with pytest.raises(DriverError) as error:
        poll(gamepad, lambda *_: False, timeout=2.0)
    assert "disconnected" in one_line(error)


def test_gamepad_errors_are_one_line(pygame_sdl):
    pygame, _ = pygame_sdl
    with pytest.raises(DriverError) as error:
        GamepadTeleop(index=pygame.joystick.get_count()).connect()
    assert "no gamepad found" in one_line(error)
    with pytest.raises(DriverError) as error:
        GamepadTeleop(axes={"vx": "a1+"})
    assert "'a1+'" in one_line(error)
    with pytest.raises(DriverError) as error:
        GamepadTeleop(buttons={0: "jump"})
    assert "'jump'" in one_line(error)


def test_gamepad_map_naming_a_missing_input_fails_at_connect(pad):
    with pytest.raises(DriverError) as error:
        GamepadTeleop(index=pad.index, axes={"vx": "a9"}).connect()
    assert "axis 9" in one_line(error)


# --- spacemouse: pyspacemouse reading recorded HID reports --------------------------------------
def report(hex_bytes: str) -> bytes:
    return bytes.fromhex(hex_bytes)


# A SpaceMouse Compact (256f:c635) as it reports: id 1 translation and id 2 rotation, each three
# little-endian int16 (about ±350 at full deflection, HID axes: +x right, +y toward the user,
# +z down), id 3 the button bits (bit 0 left, bit 1 right).
PUSH_AWAY_LEFT_AND_UP = report("01 5e01 51ff a2fe")  # x +350, y -175, z -350
TWIST_CCW_AND_ROLL = report("02 af00 0000 a2fe")  # rx +175, ry 0, rz -350
AT_REST = [report("01 0000 0000 0000"), report("02 0000 0000 0000")]
NUDGE = report("01 0a00 0000 0000")  # x +10: under 3 % of travel
LEFT_DOWN, RIGHT_DOWN, BUTTONS_UP = report("03 01 00"), report("03 02 00"), report("03 00 00")

COMPACT = {
    "path": "/dev/hidraw7",
    "vendor_id": 0x256F,
    "product_id": 0xC635,
    "manufacturer": "3Dconnexion",
    "product": "SpaceMouse Compact",
    "serial": "",
}


class FakeHidapi:
    """The hidapi C functions easyhid calls (enumerate, open, non-blocking read, close), with
    HID devices that exist only as byte strings: reads hand out queued reports exactly as
    hid_read fills a caller's buffer."""

    def __init__(self, ffi, devices: list[dict]) -> None:
        self.ffi = ffi
        self.devices = devices
        self.reports: deque[bytes] = deque()
        self.lock = threading.Lock()
        self.opened: list[str] = []
        self.closed = 0
        self.nonblocking: bool | None = None
        self._alive: list[object] = []  # C memory handed out must outlive its readers
        self._handle = ffi.new("int *")

    def feed(self, *reports: bytes) -> None:
        with self.lock:
            self.reports.extend(reports)

    def pending(self) -> int:
        with self.lock:
            return len(self.reports)

    def _keep(self, cdata):
        self._alive.append(cdata)
        return cdata

    def hid_init(self) -> int:
        return 0

    def hid_exit(self) -> int:
        return 0

    def hid_enumerate(self, vendor_id: int, product_id: int):
        head = self.ffi.NULL
        for device in reversed(self.devices):
            node = self._keep(self.ffi.new("struct hid_device_info *"))
            node.path = self._keep(self.ffi.new("char[]", device["path"].encode()))
            node.vendor_id = device["vendor_id"]
            node.product_id = device["product_id"]
            node.serial_number = self._keep(self.ffi.new("wchar_t[]", device["serial"]))
            node.release_number = 0x0437
            node.manufacturer_string = self._keep(self.ffi.new("wchar_t[]", device["manufacturer"]))
            node.product_string = self._keep(self.ffi.new("wchar_t[]", device["product"]))
            node.usage_page, node.usage, node.interface_number = 0x01, 0x08, 0
            node.next = head
            head = node
        return head

    def hid_free_enumeration(self, devices) -> None:
        pass

    def hid_open_path(self, path: bytes):
        self.opened.append(path.decode())
        return self._handle

    def hid_set_nonblocking(self, device, nonblock: int) -> int:
        self.nonblocking = bool(nonblock)
        return 0

    def hid_read(self, device, buffer, length: int) -> int:
        with self.lock:
            if not self.reports:
                return 0  # non-blocking and nothing new
            data = self.reports.popleft()
        n = min(len(data), length)
        self.ffi.memmove(buffer, data, n)
        return n

    def hid_read_timeout(self, device, buffer, length: int, milliseconds: int) -> int:
        return self.hid_read(device, buffer, length)

    def hid_write(self, device, data, length: int) -> int:
        return length

    def hid_close(self, device) -> None:
        self.closed += 1

    def hid_error(self, device):
        return self.ffi.NULL


@pytest.fixture
def hidapi(monkeypatch):
    """Swap the hidapi library easyhid loaded for the fake; returns a function that installs
    a fake with the given devices."""
    try:
        spacemouse_module._import_pyspacemouse()
    except DriverError as e:  # easyhid loads libhidapi on import; only that may be absent
        if "hidapi library" not in str(e):
            raise
        pytest.skip(f"{e} (`make setup` installs it)")
    easyhid_lib = sys.modules["easyhid.easyhid"]

    def install(devices: list[dict]) -> FakeHidapi:
        fake = FakeHidapi(easyhid_lib.ffi, devices)
        monkeypatch.setattr(easyhid_lib, "hidapi", fake)
        return fake

    return install


@pytest.fixture
def spacemouse(hidapi):
    fake = hidapi([COMPACT])
    teleop = SpaceMouseTeleop(dead_zone=0.0)
    teleop.connect()
    yield teleop, fake
    teleop.disconnect()
    assert fake.closed == 1


def test_spacemouse_reports_make_the_twist(spacemouse):
    teleop, fake = spacemouse
    assert fake.opened == [COMPACT["path"]] and fake.nonblocking is True
    state = teleop.read()
    assert np.array_equal(state.action, [0, 0, 0, 0, 0, 0, -1]) and not state.active

    fake.feed(PUSH_AWAY_LEFT_AND_UP, TWIST_CCW_AND_ROLL)
    state, _ = poll(teleop, lambda s, _: s.action[5] != 0)
    # Operator behind the arm: away is +x, left is +y, up is +z; CCW from above is +yaw,
    # rolling the puck right (+x axis) tips the gripper about the arm's -y.
    np.testing.assert_allclose(twist(state), [0.5, -1.0, 1.0, 0.0, -0.5, 1.0])
    assert state.active
    assert abs(state.timestamp - time.time()) < 0.5  # the reader's newest poll

    fake.feed(*AT_REST)
    state, _ = poll(teleop, lambda s, _: not s.active)
    assert np.array_equal(twist(state), np.zeros(6))


def test_spacemouse_dead_zone_and_scale(hidapi):
    fake = hidapi([COMPACT])
    with SpaceMouseTeleop(dead_zone=0.05, scale=0.5, rotation_scale=0.2) as teleop:
        fake.feed(NUDGE)
        poll(teleop, lambda *_: fake.pending() == 0)
        time.sleep(0.02)
        assert not teleop.read().active  # a resting hand does not drift the arm
        fake.feed(PUSH_AWAY_LEFT_AND_UP, TWIST_CCW_AND_ROLL)
        state, _ = poll(teleop, lambda s, _: s.action[5] != 0)
        half = (0.5 - 0.05) / 0.95
        np.testing.assert_allclose(
            twist(state), [0.5 * half, -0.5, 0.5, 0.0, -0.2 * half, 0.2], rtol=1e-6
        )


def test_spacemouse_buttons_accumulate_and_arrive_once_in_order(spacemouse):
    teleop, fake = spacemouse
    # LEFT toggles the gripper, RIGHT toggles intervention; taps faster than the reads.
    fake.feed(LEFT_DOWN, BUTTONS_UP, RIGHT_DOWN, BUTTONS_UP, RIGHT_DOWN, BUTTONS_UP)
    state, events = poll(teleop, lambda _, ev: len(ev) >= 2)
    assert events == [E.INTERVENE, E.INTERVENE]
    assert state.action[6] == 1.0 and quiet_for(teleop) == []
    fake.feed(LEFT_DOWN, BUTTONS_UP)
    poll(teleop, lambda s, _: s.action[6] == -1.0)


def test_spacemouse_button_map(hidapi):
    fake = hidapi([COMPACT])
    buttons = {"LEFT": "start_stop", "RIGHT": "success", "MENU": "quit"}  # no MENU: ignored
    with SpaceMouseTeleop(buttons=buttons) as teleop:
        fake.feed(LEFT_DOWN, BUTTONS_UP, RIGHT_DOWN, BUTTONS_UP, LEFT_DOWN, BUTTONS_UP)
        _, events = poll(teleop, lambda _, ev: len(ev) >= 3)
        assert events == [E.START, E.SUCCESS, E.STOP]
        assert quiet_for(teleop) == []


def test_spacemouse_missing_is_a_one_line_error(hidapi):
    hidapi([])
    with pytest.raises(DriverError) as error:
        SpaceMouseTeleop().connect()
    assert "no SpaceMouse found" in one_line(error)
    with pytest.raises(DriverError) as error:
        SpaceMouseTeleop(axes={"vx": "sideways"})
    assert "'sideways'" in one_line(error)


# --- factory, configs, robot actions ----------------------------------------------------------
def test_unknown_device_name_is_a_one_line_error():
    with pytest.raises(DriverError) as error:
        make_teleop("joystick")
    assert one_line(error) == (
        "unknown teleop device 'joystick'; valid names: gamepad, keyboard, leader, spacemouse"
    )
    with pytest.raises(DriverError) as error:
        make_teleop("keyboard", speed=2)
    assert "unknown option(s) speed" in one_line(error)


@pytest.mark.parametrize(
    ("name", "defaults"),
    [
        ("keyboard", {"keys": keyboard_module.DEFAULT_KEYS}),
        (
            "gamepad",
            {"axes": gamepad_module.DEFAULT_AXES, "buttons": gamepad_module.DEFAULT_BUTTONS},
        ),
        (
            "spacemouse",
            {"axes": spacemouse_module.DEFAULT_AXES, "buttons": spacemouse_module.DEFAULT_BUTTONS},
        ),
    ],
)
def test_configs_build_their_device_and_match_the_documented_defaults(name, defaults):
    options = yaml.safe_load((ROOT / "configs" / "teleop" / f"{name}.yaml").read_text())
    teleop = make_teleop(name, **options)
    assert teleop.name == name and not teleop.is_connected
    for key, value in defaults.items():
        assert options[key] == value, f"configs/teleop/{name}.yaml {key} differs from the code"


def test_twist_onto_a_4d_ee_delta_spec():
    spec = ActionSpec(
        kind="ee_delta",
        names=("x", "y", "z", "gripper"),
        units=("m", "m", "m", "1"),
        low=[-0.01, -0.02, -0.03, -1.0],
        high=[0.01, 0.02, 0.03, 1.0],
    )
    state = TeleopState(action=np.array([0.5, -1.0, 0.0, 0.9, 0.9, 0.9, 1.0]))
    # Rotation is dropped; each dimension scales to the robot's bound on its side.
    np.testing.assert_allclose(to_robot_action(state.action, spec), [0.005, -0.02, 0.0, 1.0])
    over = np.array([3.0, 0.0, -3.0, 0.0, 0.0, 0.0, -1.0])
    np.testing.assert_allclose(to_robot_action(over, spec), [0.01, 0.0, -0.03, -1.0])


def test_robots_package_stands_alone():
    code = (
        "import sys, robots.teleop, robots.teleop.keyboard, robots.teleop.gamepad, "
        "robots.teleop.spacemouse; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('il', 'envs')]; "
        "heavy = [m for m in ('pygame', 'pynput', 'pyspacemouse') if m in sys.modules]; "
        "assert not bad and not heavy, (bad, heavy)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
