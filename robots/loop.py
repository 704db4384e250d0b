"""A fixed-rate control loop that never waits on disk.

Three pieces, used together by record/deploy: `RateLoop` paces the steps and measures how well
it kept the pace, `EpisodeBuffer` collects each step's arrays in memory, and
`BackgroundWriter` saves finished episodes on a thread of its own, so a slow disk shows up as a
longer queue instead of a late command to the arm.

Nothing here knows about stores or policies: the writer calls whatever sink it is given (for
example a DemoStore's `add_episode`).
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["BackgroundWriter", "EpisodeBuffer", "LoopStats", "RateLoop", "Tick", "WriterError"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tick:
    """When one step started: its index, `wall_time` (time.time(), to align with sensor
    timestamps), `mono_time` (time.monotonic(), for durations: it never jumps) and `scheduled`,
    the monotonic deadline it was due to start at."""

    index: int
    wall_time: float
    mono_time: float
    scheduled: float


class LoopStats:
    """Per-step timing of a `RateLoop`: what the recording stores next to the data, so a late
    action can be told apart from a bad one."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.wall_times: list[float] = []
        self.mono_times: list[float] = []
        self.scheduled: list[float] = []
        self.work_times: list[float] = []
        """Seconds from a step's start to its `wait()` call (the caller's work)."""
        self.overrun_flags: list[bool] = []
        """Per finished step: its work ended after its deadline."""
        self.overruns = 0

    @property
    def steps(self) -> int:
        return len(self.mono_times)

    def periods(self) -> np.ndarray:
        """The actual time between consecutive step starts (s)."""
        return np.diff(np.asarray(self.mono_times, dtype=np.float64))

    def jitter(self) -> np.ndarray:
        """|actual period - nominal period| per step (s)."""
        return np.abs(self.periods() - self.period)

    def achieved_hz(self) -> float:
        """Steps per second over the run (0 before two steps)."""
        if self.steps < 2:
            return 0.0
        span = self.mono_times[-1] - self.mono_times[0]
        return (self.steps - 1) / span if span > 0 else float("inf")

    def summary(self) -> dict[str, float | int]:
        """Figures for a log line or a recording's metadata (times in milliseconds)."""
        jitter = self.jitter()
        work = np.asarray(self.work_times, dtype=np.float64)

        def pct(values: np.ndarray, q: float) -> float:
            return float(np.percentile(values, q) * 1e3) if values.size else 0.0

        return {
            "steps": self.steps,
            "nominal_hz": 1.0 / self.period,
            "achieved_hz": self.achieved_hz(),
            "jitter_p50_ms": pct(jitter, 50),
            "jitter_p99_ms": pct(jitter, 99),
            "jitter_max_ms": float(jitter.max() * 1e3) if jitter.size else 0.0,
            "work_p50_ms": pct(work, 50),
            "work_max_ms": float(work.max() * 1e3) if work.size else 0.0,
            "overruns": self.overruns,
            "overrun_fraction": self.overruns / len(self.overrun_flags)
            if self.overrun_flags
            else 0.0,
        }


class RateLoop:
    """Paces a loop at `hz` with absolute deadlines.

    Each deadline is the previous one plus the period (not "now plus the period"), so the
    time the caller's work and the wake-up take does not accumulate into drift. A step whose
    work ends after its deadline is an overrun: it is counted and flagged, and the schedule is
    re-anchored at that moment, so the next step starts at once and the ones after it a period
    apart; catching up with a burst of short steps would send the arm commands faster than it
    is meant to take them.

    Waiting: `time.sleep` until `spin` seconds (default 1 ms) before the deadline, then a busy
    spin. The sleep alone wakes late by the scheduler's slack (tens of microseconds idle,
    milliseconds on a loaded machine); the spin makes the wake-up precise at the cost of up to
    `spin` seconds of one core per step (~8% of a core at 80 Hz). `spin=0` trades precision for
    an idle CPU.

    Use: `for tick in loop.steps(n): ...` or `tick = loop.start()` then `loop.wait()` after each
    step's work (`wait` returns whether that step overran).
    """

    def __init__(self, hz: float, *, spin: float = 1e-3) -> None:
        if not hz > 0:
            raise ValueError(f"RateLoop: hz must be positive, got {hz}")
        if spin < 0:
            raise ValueError(f"RateLoop: spin must be >= 0 seconds, got {spin}")
        self.hz = float(hz)
        self.period = 1.0 / self.hz
        self.spin = float(spin)
        self.stats = LoopStats(self.period)
        self._tick: Tick | None = None

    @property
    def tick(self) -> Tick:
        """The step in progress."""
        if self._tick is None:
            raise RuntimeError("RateLoop: call start() (or iterate steps()) first")
        return self._tick

    def start(self) -> Tick:
        """Anchor the schedule now and begin step 0; statistics start afresh."""
        self.stats = LoopStats(self.period)
        return self._begin(0, time.monotonic())

    def wait(self) -> bool:
        """End the current step: record whether its work overran its deadline, wait for the
        next deadline (or re-anchor after an overrun) and begin the next step. Returns True
        when the step that just ended overran."""
        tick = self.tick
        overrun, now = self._end_step()
        if overrun:
            deadline = now
        else:
            deadline = tick.scheduled + self.period
            self._sleep_until(deadline)
        self._begin(tick.index + 1, deadline)
        return overrun

    def steps(self, n: int | None = None) -> Iterator[Tick]:
        """Yield `n` ticks (forever if None), waiting for each deadline in between. The last
        step is recorded as finished when the caller asks for the next tick or stops
        iterating."""
        if n is not None and n <= 0:
            return
        self.start()
        try:
            yield self.tick
            while n is None or self.tick.index + 1 < n:
                self.wait()
                yield self.tick
        finally:
            self._end_step()

    def _end_step(self) -> tuple[bool, float]:
        tick = self.tick
        now = time.monotonic()
        overrun = now > tick.scheduled + self.period
        self.stats.work_times.append(now - tick.mono_time)
        self.stats.overrun_flags.append(overrun)
        self.stats.overruns += overrun
        return overrun, now

    def _begin(self, index: int, scheduled: float) -> Tick:
        mono = time.monotonic()
        tick = Tick(index, time.time(), mono, scheduled)
        self.stats.wall_times.append(tick.wall_time)
        self.stats.mono_times.append(mono)
        self.stats.scheduled.append(scheduled)
        self._tick = tick
        return tick

    def _sleep_until(self, deadline: float) -> None:
        remaining = deadline - time.monotonic() - self.spin
        if remaining > 0:
            time.sleep(remaining)
        while time.monotonic() < deadline:
            pass


def _flatten(step: Mapping[str, Any], prefix: str, out: dict[str, Any]) -> None:
    for key, value in step.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            _flatten(value, f"{name}/", out)
        else:
            out[name] = value


class EpisodeBuffer:
    """Steps of one episode, kept in memory until `stack()` turns them into `(T, *shape)` arrays.

    `append` copies every value, so a caller that reuses or mutates its arrays (a camera's
    frame buffer, an observation dict updated in place) cannot change what was recorded; it is
    O(1) (a list append per key). Nested dicts become "/"-joined keys ({"obs": {"state": x}} is
    "obs/state"), the layout a DemoStore uses. Every step must have the same keys, shapes and
    dtypes as the first: a mismatch is reported at the step that introduced it, not at save.
    """

    def __init__(self) -> None:
        self._columns: dict[str, list[np.ndarray]] = {}
        self._layout: dict[str, tuple[tuple[int, ...], np.dtype]] = {}

    def __len__(self) -> int:
        return len(next(iter(self._columns.values()), ()))

    def keys(self) -> list[str]:
        return list(self._columns)

    def append(self, step: Mapping[str, Any]) -> None:
        """Add one step: a (possibly nested) mapping of arrays or scalars."""
        flat: dict[str, Any] = {}
        _flatten(step, "", flat)
        values = {k: np.array(v, copy=True) for k, v in flat.items()}
        if not self._columns:
            if not values:
                raise ValueError("EpisodeBuffer: a step needs at least one key")
            self._layout = {k: (v.shape, v.dtype) for k, v in values.items()}
            self._columns = {k: [] for k in values}
        elif values.keys() != self._layout.keys():
            missing = sorted(self._layout.keys() - values.keys())
            extra = sorted(values.keys() - self._layout.keys())
            raise ValueError(
                f"EpisodeBuffer: step {len(self)} lacks {missing} and adds {extra} compared with "
                "the episode's first step; record the same keys every step"
            )
        else:
            for k, v in values.items():
                shape, dtype = self._layout[k]
                if v.shape != shape or v.dtype != dtype:
                    raise ValueError(
                        f"EpisodeBuffer: step {len(self)} has {k} {v.dtype}{list(v.shape)}, the "
                        f"episode started with {dtype}{list(shape)}; convert it before appending"
                    )
        for k, v in values.items():
            self._columns[k].append(v)

    def stack(self) -> dict[str, np.ndarray]:
        """Every key as one `(T, *shape)` array ({} for an empty episode)."""
        return {k: np.stack(v) for k, v in self._columns.items()}

    def clear(self) -> None:
        """Start a new episode."""
        self._columns = {}
        self._layout = {}


class WriterError(RuntimeError):
    """Saving an episode failed on the writer thread; raised to the caller on its next call."""


_CLOSE = object()


class BackgroundWriter:
    """Saves episodes on a thread of its own so the control loop never waits on disk.

    `submit(arrays, meta)` queues an episode and returns at once (the queue is unbounded: the
    loop must not block, and a backlog of episodes fits in memory); the thread calls
    `sink(arrays, **meta)` for each, in order. A sink exception does not stop the thread (the
    other episodes still get saved); it is raised as `WriterError` by the next `submit` or by
    `close`, so a failed save is never lost silently. `close()` (and leaving a `with` block,
    Ctrl-C included) finishes every queued episode before returning; a second Ctrl-C during
    that wait abandons the rest. The writer takes ownership of the arrays: they are not copied,
    so do not modify them after submitting.
    """

    def __init__(self, sink: Callable[..., Any], *, name: str = "episode-writer") -> None:
        self._sink = sink
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0
        self._errors: list[WriterError] = []
        self._closed = False
        self.save_seconds: list[float] = []
        """How long each sink call took, in order of completion."""
        self.submit_seconds: list[float] = []
        """How long each `submit` call took the caller (should be microseconds)."""
        self.saved = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        # A writer left open still saves its queue when the interpreter exits normally.
        atexit.register(self.close)

    @property
    def pending(self) -> int:
        """Episodes submitted and not yet through the sink (queued or being saved)."""
        with self._lock:
            return self._pending

    def submit(
        self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None
    ) -> None:
        """Queue one episode for `sink(arrays, **meta)`; never waits for a save.

        Raises `WriterError` if an earlier save failed; the episode given to this call is
        queued all the same, so handling the error loses nothing more."""
        start = time.perf_counter()
        if self._closed:
            raise RuntimeError("BackgroundWriter: submit after close(); create a new writer")
        with self._lock:
            self._pending += 1
        self._queue.put((arrays, dict(meta or {})))
        self.submit_seconds.append(time.perf_counter() - start)
        self._raise_errors()

    def close(self) -> None:
        """Save every queued episode, stop the thread, and raise the first sink error not yet
        reported. Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._queue.put(_CLOSE)
            atexit.unregister(self.close)
        interrupted = False
        while self._thread.is_alive():
            try:
                self._thread.join(timeout=0.1)
            except KeyboardInterrupt:
                if interrupted:
                    log.warning("abandoning %d unsaved episode(s)", self.pending)
                    raise
                interrupted = True
                log.warning(
                    "finishing %d queued episode(s) before exit; Ctrl-C again to abandon them",
                    self.pending,
                )
        self._raise_errors()
        if interrupted:
            raise KeyboardInterrupt

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _raise_errors(self) -> None:
        with self._lock:
            if not self._errors:
                return
            first, rest = self._errors[0], len(self._errors) - 1
            self._errors = []
        if rest:
            first.add_note(f"{rest} more episode(s) failed to save as well; see the log")
        raise first

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _CLOSE:
                return
            arrays, meta = item
            start = time.perf_counter()
            try:
                self._sink(arrays, **meta)
            except Exception as e:
                what = ", ".join(f"{k}={v!r}" for k, v in meta.items())[:200] or "without meta"
                log.error("saving episode (%s) failed: %s", what, e)
                error = WriterError(
                    f"saving episode ({what}) failed: {type(e).__name__}: {e}; the episodes "
                    "after it are still being saved"
                )
                error.__cause__ = e
                with self._lock:
                    self._errors.append(error)
            else:
                self.saved += 1
            finally:
                self.save_seconds.append(time.perf_counter() - start)
                with self._lock:
                    self._pending -= 1
