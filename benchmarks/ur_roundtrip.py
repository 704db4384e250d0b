"""What running ur_rtde in a process of its own costs the UR driver per control step.

`URArm` reaches ur_rtde through a pipe to a child process (`robots.vendor_process`), so a crash
in the library cannot take the session down. Measured here against the baseline of the same
driver with ur_rtde loaded in-process (`isolate=False`), in the same run, against the loopback
controller emulator (`robots.emulators.ur_controller`): microseconds per `observe()` and per
`command()` (a servoL delta), and both together, the driver's share of one control step. The
loop is paced at the arm's 125 Hz, as a session drives it (the child sleeps between steps and
must wake up for each call), and the two modes alternate round by round.

    .venv/bin/python benchmarks/ur_roundtrip.py
    .venv/bin/python benchmarks/ur_roundtrip.py --steps 1000 --rounds 3 --markdown
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from report import cpu, print_table

from robots.emulators.ur_controller import URControllerEmulator
from robots.loop import RateLoop
from robots.ur import URArm

CALLS = ("observe", "command", "step")
MODES = {"ur_rtde in-process (baseline)": False, "ur_rtde in its own process": True}


def run_round(host: str, isolate: bool, steps: int) -> dict[str, list[float]]:
    """One connection, `steps` paced steps of observe + command: each call's time in µs."""
    arm = URArm(host, isolate=isolate)
    arm.connect()
    times: dict[str, list[float]] = {"observe": [], "command": [], "step": []}
    try:
        loop = RateLoop(arm.fps)
        delta = np.array([0.0002, 0, 0, 0, 0, 0, -1.0])
        loop.start()
        for i in range(steps + 50):
            t0 = time.perf_counter()
            arm.observe()
            t1 = time.perf_counter()
            arm.command(delta if (i // 100) % 2 == 0 else -delta)  # back and forth
            t2 = time.perf_counter()
            if i >= 50:  # warm-up
                times["observe"].append((t1 - t0) * 1e6)
                times["command"].append((t2 - t1) * 1e6)
                times["step"].append((t2 - t0) * 1e6)
            loop.wait()
    finally:
        arm.disconnect()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per mode, alternating")
    parser.add_argument("--markdown", action="store_true", help="markdown tables")
    args = parser.parse_args()
    times = {mode: {"observe": [], "command": [], "step": []} for mode in MODES}
    with URControllerEmulator() as controller:
        for _ in range(args.rounds):
            for mode, isolate in MODES.items():
                for key, values in run_round(controller.host, isolate, args.steps).items():
                    times[mode][key].extend(values)
    rows = []
    for mode in MODES:
        row = [mode]
        for key in CALLS:
            values = np.asarray(times[mode][key])
            row += [f"{np.median(values):.0f}", f"{np.percentile(values, 99):.0f}"]
        rows.append(row)
    base = np.median(times["ur_rtde in-process (baseline)"]["step"])
    isolated = np.median(times["ur_rtde in its own process"]["step"])
    print(
        f"machine: {cpu()}; UR5e emulator on loopback, servoL at 125 Hz, "
        f"{args.rounds} x {args.steps} steps per mode"
    )
    print_table(
        "UR driver time per call, µs",
        ["mode"] + [f"{call} {q}" for call in CALLS for q in ("p50", "p99")],
        rows,
        args.markdown,
    )
    print(
        f"isolation adds {isolated - base:.0f} µs per step (median), "
        f"{(isolated - base) / (1e6 / 125) * 100:.1f}% of the 8 ms period at 125 Hz"
    )


if __name__ == "__main__":
    main()
