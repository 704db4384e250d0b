"""The control loop's pacing, the episode buffer and the background writer. Timing is only
checked against generous bounds (the machine may be loaded); ordering is checked with events."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from robots.loop import BackgroundWriter, EpisodeBuffer, RateLoop, WriterError


def test_steps_are_stamped_and_about_a_period_apart():
    loop = RateLoop(200)
    ticks = [tick for tick in loop.steps(40)]
    stats = loop.stats
    assert [t.index for t in ticks] == list(range(40))
    assert np.all(np.diff(stats.mono_times) > 0)
    assert np.all(np.diff(stats.wall_times) >= 0)
    assert len(stats.overrun_flags) == len(stats.work_times) == 40
    # A step never starts before its deadline, and on average not far after it.
    assert all(t.mono_time >= t.scheduled for t in ticks)
    mean = float(np.mean(stats.periods()))
    assert 0.9 * loop.period <= mean <= 10 * loop.period
    summary = stats.summary()
    assert summary["steps"] == 40 and summary["nominal_hz"] == pytest.approx(200)
    assert all(np.isfinite(v) for v in summary.values())


def test_deadlines_are_absolute_not_relative_to_the_work():
    loop = RateLoop(200)
    loop.start()
    for _ in range(20):
        time.sleep(0.001)  # some work each step: it must not push the schedule back
        loop.wait()
    scheduled, flags = loop.stats.scheduled, loop.stats.overrun_flags
    for k in range(20):
        if not flags[k]:  # an on-time step's successor is due exactly a period later
            assert scheduled[k + 1] - scheduled[k] == pytest.approx(loop.period, abs=1e-9)


def test_a_slow_step_is_an_overrun_and_the_schedule_re_anchors():
    loop = RateLoop(200)  # 5 ms
    for tick in loop.steps(8):
        if tick.index == 3:
            time.sleep(0.03)
    stats = loop.stats
    assert stats.overrun_flags[3] and stats.overruns >= 1
    finished = stats.mono_times[3] + stats.work_times[3]
    # Re-anchored at the end of the slow step, not kept on the old grid: no burst of steps
    # to catch up, and the step after it is due a full period later.
    assert stats.scheduled[4] >= finished - 1e-9
    assert stats.scheduled[4] > stats.scheduled[3] + 5 * loop.period
    assert stats.mono_times[5] >= stats.scheduled[4] + loop.period or stats.overrun_flags[4]


def test_wait_reports_the_overrun_of_the_step_that_ended():
    loop = RateLoop(100)
    loop.start()
    time.sleep(0.03)
    assert loop.wait() is True
    assert loop.tick.index == 1 and loop.stats.overruns == 1
    with pytest.raises(ValueError, match="hz must be positive"):
        RateLoop(0)


def test_episode_buffer_copies_and_stacks():
    buf = EpisodeBuffer()
    obs = np.zeros(3, dtype=np.float32)
    for t in range(5):
        obs[:] = t  # the caller reuses its array
        buf.append({"obs": {"state": obs}, "action": np.full(2, t), "overrun": t == 2})
    obs[:] = 99
    arrays = buf.stack()
    assert len(buf) == 5 and set(arrays) == {"obs/state", "action", "overrun"}
    assert arrays["obs/state"].shape == (5, 3) and arrays["obs/state"].dtype == np.float32
    assert np.array_equal(arrays["obs/state"][:, 0], np.arange(5))
    assert arrays["overrun"].tolist() == [False, False, True, False, False]
    with pytest.raises(ValueError, match="lacks"):
        buf.append({"obs": {"state": obs}})
    with pytest.raises(ValueError, match=r"step 5 has action"):
        buf.append({"obs": {"state": obs}, "action": np.zeros(3), "overrun": False})
    buf.clear()
    assert len(buf) == 0 and buf.stack() == {}


def test_submit_returns_while_the_sink_is_still_saving():
    started, release, finished = threading.Event(), threading.Event(), threading.Event()
    saved = []

    def slow_sink(arrays, **meta):
        started.set()
        release.wait(timeout=5.0)  # stands in for a slow disk: held until the test says so
        time.sleep(0.01)
        saved.append(meta["episode"])
        finished.set()

    writer = BackgroundWriter(slow_sink)
    writer.submit({"a": np.zeros(3)}, {"episode": 0})
    assert started.wait(timeout=5.0)
    writer.submit({"a": np.zeros(3)}, {"episode": 1})  # the sink is busy: must not wait for it
    assert not finished.is_set() and writer.pending == 2
    release.set()
    writer.close()
    assert saved == [0, 1] and writer.pending == 0 and writer.saved == 2
    assert len(writer.save_seconds) == 2 and len(writer.submit_seconds) == 2
    assert max(writer.submit_seconds) < 1.0  # generous: it is a queue put


def test_sink_errors_surface_on_the_next_submit_and_on_close():
    done = threading.Event()

    def sink(arrays, **meta):
        if meta["episode"] == 1:
            done.set()
            raise OSError("disk full")

    writer = BackgroundWriter(sink)
    writer.submit({"a": np.zeros(1)}, {"episode": 1})
    assert done.wait(timeout=5.0)
    deadline = time.monotonic() + 5.0
    while writer.pending and time.monotonic() < deadline:
        time.sleep(0.001)
    with pytest.raises(WriterError, match="disk full"):
        writer.submit({"a": np.zeros(1)}, {"episode": 2})  # queued all the same
    writer.close()  # the error was reported once; episode 2 saves fine
    assert writer.saved == 1 and writer.pending == 0
    with pytest.raises(RuntimeError, match="after close"):
        writer.submit({"a": np.zeros(1)})

    writer = BackgroundWriter(sink)
    writer.submit({"a": np.zeros(1)}, {"episode": 1})
    with pytest.raises(WriterError, match=r"episode=1.*disk full"):
        writer.close()


def test_close_drains_every_queued_episode_even_after_ctrl_c():
    saved = []

    def sink(arrays, **meta):
        time.sleep(0.02)
        saved.append(int(arrays["x"][0]))

    with pytest.raises(KeyboardInterrupt), BackgroundWriter(sink) as writer:
        for i in range(6):
            writer.submit({"x": np.array([i])})
        raise KeyboardInterrupt  # the operator hits Ctrl-C while episodes are queued
    assert saved == list(range(6)) and writer.pending == 0
