"""A device's vendor library in a process of its own, so that a crash inside it ends the
session with one line instead of ending the process.

Driver SDKs are compiled extensions with threads of their own (ur_rtde's RTDE receive thread,
librealsense's frame queues, a serial port's reader). A segmentation fault or an abort in one of
them, typically while its connection goes away, kills the process that loaded it: with it the
control loop, the background writer and the operator's status line, and the user sees no
message at all. A driver that hosts its library here instead keeps its logic (safety checks,
setpoints, error messages) in the session's process and reaches the library through a pipe:

    session process                               vendor process (python -m robots.vendor_process)
    URArm.observe() ─► host.call("state") ──pipe──► RTDELink.state() ─► ur_rtde ─► controller
                     ◄─ result or exception ◄─────┘

`VendorProcess.call` waits for each answer with a deadline. If the vendor process dies (any
signal: SIGSEGV, SIGABRT, SIGKILL) the pipe closes at once and the call raises `DriverCrashed`
naming the library and the signal; if it stops answering, it is killed and the call raises
`DriverCrashed` too. `DriverCrashed` is a `ConnectionLost`, so a session treats it exactly as a
cable pulled mid-episode: the loop stops, the episode in flight is kept or dropped as the user
chose, saved episodes stay, and the CLI prints one line.

What is hosted is any class the vendor process can import (`"package.module:Class"`), built from
keyword arguments; every call is `method(*args)` with picklable arguments and result. Exceptions
raised in the vendor process travel back and are raised again in the caller (a library's own
`RuntimeError` stays a `RuntimeError`), so a driver handles them as it would in-process.
`InProcessVendor` has the same interface without the process, for a debugger or a comparison.

Another backend adopts it the way `robots.ur` does: what touches the library moves into one
class with coarse methods, one round trip per loop step (`RTDELink`: `state()`, `servo()`, ...),
and the driver builds it with `host_vendor(...)` on connect and closes it on disconnect. A
servo bus's sync read and write, or a camera's newest frame (a VGA frame is about a megabyte
through the pipe), fit the same shape.

The vendor process is started with `subprocess` (a fresh interpreter that imports only `robots`
and the library, never the caller's modules; forking a process that already runs zarr's and the
cameras' threads would not be safe). It ignores SIGINT, so Ctrl-C reaches the session alone,
which then still stops the arm through it, and it exits when its pipe closes, so it never
outlives the session.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from robots.base import DriverCrashed, DriverError

__all__ = ["InProcessVendor", "VendorHost", "VendorProcess", "host_vendor"]

_CLOSE = "__close__"


def _signal_name(returncode: int) -> str:
    """The signal that ended a process, from its negative return code: "SIGSEGV"."""
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


class VendorHost:
    """Where a driver's vendor object lives: `call(method, *args)` runs `object.method(*args)`
    and returns its result or raises its exception."""

    library: str = ""
    pid: int | None = None

    def call(self, method: str, *args: Any, within: float | None = None) -> Any:
        raise NotImplementedError

    @property
    def alive(self) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class InProcessVendor(VendorHost):
    """The vendor object in the caller's own process: no isolation (a crash in the library ends
    the process), no round trip. For a debugger, or to measure what the isolation costs."""

    def __init__(self, target: str, *, library: str, **kwargs: Any) -> None:
        self.library = library
        self.pid = os.getpid()
        self._object: Any = _build(target, kwargs)

    def call(self, method: str, *args: Any, within: float | None = None) -> Any:
        return getattr(self._object, method)(*args)

    @property
    def alive(self) -> bool:
        return self._object is not None

    def close(self) -> None:
        target, self._object = self._object, None
        if target is not None and hasattr(target, "close"):
            target.close()


class VendorProcess(VendorHost):
    """The vendor object in a child process, reached through a pipe (see the module's
    docstring).

    `device` names the device in messages (`ur:192.168.1.10`), `library` the vendor library
    (`ur_rtde`). `answer_within` is how long a call may take before the vendor process counts
    as hung (each call can ask for longer with `within=`, e.g. a connect with its own timeout);
    `start_within` covers the start-up, which imports the library."""

    def __init__(
        self,
        target: str,
        *,
        device: str,
        library: str,
        answer_within: float = 1.0,
        start_within: float = 30.0,
        **kwargs: Any,
    ) -> None:
        if answer_within <= 0:
            raise DriverError(f"{device}: answer_within must be > 0 s, got {answer_within}")
        self.device, self.library = device, library
        self.answer_within = float(answer_within)
        self._lock = threading.Lock()
        self._ended: str | None = None
        ours, theirs = socket.socketpair()
        fd = theirs.fileno()
        try:
            self._proc = subprocess.Popen(
                # -P: the caller's working directory stays off the path (a folder named
                # `robots` there must not stand in for this package)
                [sys.executable, "-P", "-m", "robots.vendor_process", library, str(fd)],
                pass_fds=(fd,),
                stdin=subprocess.DEVNULL,
                env=_child_env(),
            )
        except OSError as e:
            ours.close()
            raise DriverError(f"{device}: cannot start a process for {library}: {e}") from None
        finally:
            theirs.close()  # the child's end: only the child may hold it, so its exit closes it
        self.pid = self._proc.pid
        self._conn = Connection(ours.detach())
        try:
            self.call("__init__", target, kwargs, within=start_within)
        except BaseException:
            self.close()
            raise

    @property
    def alive(self) -> bool:
        return self._ended is None and self._proc.poll() is None

    def call(self, method: str, *args: Any, within: float | None = None) -> Any:
        """`method(*args)` on the vendor object, its result or its exception. Raises
        `DriverCrashed` once the vendor process is dead or hung (and every call after)."""
        with self._lock:
            if self._ended is not None:
                raise DriverCrashed(self._ended)
            deadline = self.answer_within if within is None else within
            try:
                self._conn.send((method, args))
                answered = self._conn.poll(deadline)
                if answered:
                    ok, value = self._conn.recv()
            except (EOFError, OSError):
                raise self._died() from None
            if not answered:
                self._kill()
                raise self._ended_with(
                    f"{self.library} did not answer {method} within {deadline:g} s"
                )
            if ok:
                return value
            raise value

    def _died(self) -> DriverCrashed:
        """The pipe closed under a call: the vendor process is gone; say how it ended."""
        try:
            returncode = self._proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:  # the pipe broke but the process lingers
            self._kill()
            returncode = self._proc.returncode
        if returncode < 0:
            how = _signal_name(returncode)
            return self._ended_with(f"{self.library} crashed with {how}", how)
        return self._ended_with(f"{self.library}'s process exited with code {returncode}")

    def _ended_with(self, why: str, sig: str | None = None) -> DriverCrashed:
        """Mark the vendor process as gone for good; the error every later call raises."""
        self._ended = why
        with contextlib.suppress(OSError):
            self._conn.close()
        return DriverCrashed(why, signal=sig)

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=5.0)

    def close(self) -> None:
        """Let the vendor object close (its `close()`, if any) and the process exit; kill it
        if it does not within a few seconds. Never raises: a library that crashes on its way
        out (destructors of a dead connection) takes nothing with it any more."""
        with self._lock:
            if self._ended is None:
                with contextlib.suppress(EOFError, OSError):
                    self._conn.send((_CLOSE, ()))
                    if self._conn.poll(3.0):
                        self._conn.recv()
                self._ended = f"{self.library} was closed"
            with contextlib.suppress(OSError):
                self._conn.close()
            try:
                self._proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                self._kill()


def host_vendor(
    target: str,
    *,
    device: str,
    library: str,
    isolate: bool = True,
    answer_within: float = 1.0,
    start_within: float = 30.0,
    **kwargs: Any,
) -> VendorHost:
    """The vendor object `target` ("module:Class", built with `kwargs`), in a process of its
    own (`isolate`, see `VendorProcess`) or in this one (`InProcessVendor`)."""
    if isolate:
        return VendorProcess(
            target,
            device=device,
            library=library,
            answer_within=answer_within,
            start_within=start_within,
            **kwargs,
        )
    return InProcessVendor(target, library=library, **kwargs)


def _build(target: str, kwargs: dict[str, Any]) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)(**kwargs)


def _child_env() -> dict[str, str]:
    """The caller's environment, with the directory `robots` was imported from first on the
    path: the child must import this same `robots`, wherever the caller found it."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def _portable(error: BaseException) -> BaseException:
    """`error` if it survives pickling, else a RuntimeError with its text (a vendor library's
    own exception types need not pickle)."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def serve(fd: int) -> None:
    """The vendor process: build the object the first message names, then answer calls until
    the pipe closes or the caller says close. Exits with `os._exit`, so no library destructor
    runs at interpreter shutdown (ur_rtde's abort there when its controller is gone)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the session to handle
    conn = Connection(fd)
    target: Any = None
    try:
        while True:
            try:
                method, args = conn.recv()
            except (EOFError, OSError):
                break
            if method == _CLOSE:
                if target is not None and hasattr(target, "close"):
                    with contextlib.suppress(Exception):
                        target.close()
                with contextlib.suppress(OSError):
                    conn.send((True, None))
                break
            try:
                if method == "__init__":
                    target = _build(args[0], args[1])
                    result = None
                else:
                    result = getattr(target, method)(*args)
                reply = (True, result)
            except Exception as e:
                reply = (False, _portable(e))
            try:
                conn.send(reply)
            except (OSError, pickle.PicklingError) as e:
                with contextlib.suppress(OSError):
                    conn.send((False, RuntimeError(f"cannot send the answer to {method}: {e}")))
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    # argv: the library's name (so `ps` says what the process is for), the pipe's descriptor
    serve(int(sys.argv[2]))
