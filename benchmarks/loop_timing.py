"""Timing of the robot control loop while it records: period jitter, overruns, camera frames,
and what saving an episode costs the loop.

Setup: the simulated Meta-World arm with two scene cameras (84×84, 30 fps, each rendered by its
own thread), the safety filter, an operator that moves the hand in a circle and ends an episode
every `--seconds`, and a DemoStore written through the background writer: everything a
teleoperated recording does, at 30 Hz and 125 Hz.

Baseline, measured in the same run: a loop that saved inline would stall for as long as
`DemoStore.add_episode` takes on the same episode; the background writer's `submit` is what the
loop actually waits for.

    .venv/bin/python benchmarks/loop_timing.py
    .venv/bin/python benchmarks/loop_timing.py --episodes 5 --seconds 4 --markdown
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
from report import cpu, print_table

from il.data.store import DemoStore
from il.session import Session, robot_schema
from robots.base import Teleop, TeleopEvent, TeleopState
from robots.safety import SafeRobot, SafetyConfig
from robots.sim import SIM_SAFETY, SimArm


class CircleOperator(Teleop):
    """Starts an episode, moves the hand in a circle, stops (saves) after `steps`, and quits
    after `episodes`: a repeatable stand-in for a person at the keyboard."""

    name = "circle"

    def __init__(self, steps: int, episodes: int) -> None:
        self.steps, self.episodes = steps, episodes
        self._t = 0
        self._done = 0

    def connect(self) -> None:
        self._t = 0

    def disconnect(self) -> None:
        pass

    def read(self) -> TeleopState:
        events = []
        phase = self._t % (self.steps + 1)
        if phase == 0:
            events.append(TeleopEvent.START if self._done < self.episodes else TeleopEvent.QUIT)
        elif phase == self.steps:
            events.append(TeleopEvent.STOP)
            self._done += 1
        angle = 2 * math.pi * self._t / 100
        twist = np.array([math.cos(angle), math.sin(angle), 0, 0, 0, 0, -1.0]) * 0.5
        self._t += 1
        return TeleopState(action=twist, active=True, events=events, timestamp=time.time())


def run(hz: float, seconds: float, episodes: int, cameras: list[str]) -> dict[str, float]:
    arm = SimArm("metaworld/pick-place-v3")
    safe = SafeRobot(arm, SafetyConfig.from_dict(SIM_SAFETY))
    with tempfile.TemporaryDirectory() as tmp, safe:
        cams = [arm.camera(name, size=84, fps=30) for name in cameras]
        for cam in cams:
            cam.start()
        for cam in cams:
            cam.wait_first()
        sizes = {c.name: (84, 84) for c in cams}
        store = DemoStore.open_or_create(Path(tmp) / "bench.zarr", robot_schema(safe, cams, sizes))
        steps = int(seconds * hz)
        operator = CircleOperator(steps, episodes)
        session = Session(safe, hz=hz, cameras=cams, teleop=operator, store=store)
        start = time.monotonic()
        report = session.run(wait_for_start=True)
        elapsed = time.monotonic() - start
        captured = {c.name: c.frames_captured for c in cams}
        for cam in cams:
            cam.stop()
        # The baseline: the same save, done where the loop would wait for it.
        episode = store.read_episode(0)
        inline = []
        for _ in range(3):
            t0 = time.perf_counter()
            store.add_episode(episode, task=arm.task, source="teleop")
            inline.append(time.perf_counter() - t0)
        # Frames: every loop step at or below the camera rate should see a new one.
        stamps = store.read_episode(0, [f"time/image/{cameras[0]}"])[f"time/image/{cameras[0]}"]
        store.close()
    expected = elapsed * 30
    loop = report.loop
    return {
        "hz": hz,
        "achieved_hz": loop["achieved_hz"],
        "jitter_p50_ms": loop["jitter_p50_ms"],
        "jitter_p99_ms": loop["jitter_p99_ms"],
        "jitter_p99_pct": loop["jitter_p99_ms"] / (1000 / hz) * 100,
        "overruns": loop["overruns"],
        "steps": loop["steps"],
        "frames_dropped": max(0, round(expected - min(captured.values()))),
        "new_frame_fraction": len(np.unique(stamps)) / len(stamps),
        "submit_max_ms": max(report.submit_seconds) * 1e3,
        "save_ms": float(np.median(report.save_seconds)) * 1e3,
        "inline_save_ms": float(np.median(inline)) * 1e3,
        "saved": report.saved,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of an episode")
    parser.add_argument("--hz", type=float, nargs="+", default=[30.0, 125.0])
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    rows = []
    for hz in args.hz:
        r = run(hz, args.seconds, args.episodes, ["corner", "topview"])
        rows.append(
            [
                f"{hz:g} Hz",
                f"{r['achieved_hz']:.1f}",
                f"{r['jitter_p50_ms']:.3f}",
                f"{r['jitter_p99_ms']:.3f} ({r['jitter_p99_pct']:.1f}%)",
                f"{r['overruns']} / {r['steps']}",
                f"{r['frames_dropped']}",
                f"{r['new_frame_fraction']:.2f}",
                f"{r['submit_max_ms']:.3f}",
                f"{r['save_ms']:.1f}",
                f"{r['inline_save_ms']:.1f} ({r['inline_save_ms'] / (1000 / hz):.1f} periods)",
            ]
        )
    print(f"machine: {cpu()}; sim arm + 2 cameras (84x84, 30 fps), recording")
    print_table(
        "control loop while recording",
        [
            "rate",
            "achieved Hz",
            "jitter p50 ms",
            "jitter p99 ms (% of period)",
            "overruns / steps",
            "frames dropped",
            "new frame per step",
            "loop's wait for a save, max ms",
            "save on writer thread, ms",
            "baseline: inline save, ms",
        ],
        rows,
        args.markdown,
    )


if __name__ == "__main__":
    main()
