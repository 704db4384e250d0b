"""A vendor library in a process of its own (`robots.vendor_process`): calls and their errors
cross the pipe unchanged, and the process dying or hanging is a one-line `DriverCrashed`, never
the end of the caller. The hosted objects are plain standard-library ones, so this runs without
any hardware library; tests/test_ur.py runs ur_rtde itself this way."""

from __future__ import annotations

import os
import signal

import pytest
from hardware_helpers import gone

from robots.base import ConnectionLost, DriverCrashed, DriverError
from robots.vendor_process import InProcessVendor, VendorProcess, host_vendor


@pytest.fixture
def counter() -> VendorProcess:
    host = VendorProcess("collections:Counter", device="test:counter", library="collections")
    yield host
    host.close()


def test_calls_and_their_errors_cross_the_pipe(counter: VendorProcess) -> None:
    assert counter.pid != os.getpid() and counter.alive
    counter.call("update", "abracadabra")
    assert counter.call("most_common", 1) == [("a", 5)]
    with pytest.raises(TypeError):  # the exception raised there, raised here as it was
        counter.call("update", 5)
    assert counter.call("total") == 11  # and the process lives on


def test_a_crash_is_a_driver_crashed_naming_the_signal(counter: VendorProcess) -> None:
    for sig in (signal.SIGSEGV, signal.SIGABRT):
        host = VendorProcess("collections:Counter", device="test:counter", library="collections")
        os.kill(host.pid, sig)
        with pytest.raises(DriverCrashed) as info:
            host.call("total")
        assert isinstance(info.value, ConnectionLost) and info.value.signal == sig.name
        assert str(info.value) == f"collections crashed with {sig.name}"
        with pytest.raises(DriverCrashed):  # and so does every later call
            host.call("total")
        assert not host.alive
        host.close()  # quiet after a crash
        assert gone(host.pid)
    assert counter.call("total") == 0  # a crash ends only its own process


def test_a_hung_process_is_ended_at_its_deadline() -> None:
    host = VendorProcess(
        "collections:Counter", device="test:counter", library="collections", answer_within=0.3
    )
    try:
        os.kill(host.pid, signal.SIGSTOP)
        with pytest.raises(DriverCrashed) as info:
            host.call("total")
        assert str(info.value) == "collections did not answer total within 0.3 s"
        assert info.value.signal is None and gone(host.pid)
    finally:
        host.close()


def test_ctrl_c_is_left_to_the_caller(counter: VendorProcess) -> None:
    """A terminal's Ctrl-C reaches the whole process group; the session must still be able to
    stop the arm through its vendor process afterwards."""
    os.kill(counter.pid, signal.SIGINT)
    counter.call("update", "ab")
    assert counter.call("total") == 2


def test_close_ends_the_process(counter: VendorProcess) -> None:
    counter.close()
    counter.close()
    assert gone(counter.pid)


def test_errors_while_starting_are_raised_and_end_the_process() -> None:
    # What the vendor object's constructor raises (here a DriverError) comes back as it was.
    with pytest.raises(DriverError, match="unknown robot 'nosuch:thing'"):
        VendorProcess("robots.registry:make_robot", device="t", library="t", name="nosuch:thing")
    with pytest.raises(ModuleNotFoundError):
        VendorProcess("no_such_module:Thing", device="test:none", library="none")


def test_in_process_host_has_the_same_interface() -> None:
    host = host_vendor(
        "collections:Counter", device="test:counter", library="collections", isolate=False
    )
    assert isinstance(host, InProcessVendor) and host.pid == os.getpid()
    host.call("update", "aab")
    assert host.call("most_common", 1) == [("a", 2)]
    host.close()
    assert not host.alive
