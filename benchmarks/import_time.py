"""What starting a command costs before it does anything: `il --help`, and `il deploy` of a BC
checkpoint to a real-arm backend up to the moment it opens the arm.

A deployment to a real arm should pay for torch, the policy it runs and the driver, never for a
simulator or for methods it does not run. Each command runs in a fresh process under
`python -X importtime`, so the figure is the interpreter's own account of every module it
imported (cumulative microseconds of the top-level imports), and the module list says whether
Meta-World, MuJoCo or a paper method came in. The baseline, measured in the same run, is the
floor every policy load pays: `import torch`, and `import numpy` for the CLI.

The deploy runs against a serial port that does not exist (`dynamixel:/tmp/no-such-port`): the
command reads the checkpoint, builds the driver, and stops with a one-line error where it would
open the port, after every import the deployment needs.

    .venv/bin/python benchmarks/import_time.py
    .venv/bin/python benchmarks/import_time.py --repeats 5 --markdown
    .venv/bin/python benchmarks/import_time.py --before ../il-old   # another checkout beside
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import cpu, print_table

ROOT = Path(__file__).resolve().parents[1]
WATCHED = ("metaworld", "mujoco", "il.methods", "envs.experts", "gymnasium")


def make_checkpoint(folder: Path, port: str) -> Path:
    """A BC checkpoint for a Koch arm (joint positions in, joint positions out), random weights:
    what is loaded does not depend on the weights."""
    import numpy as np

    from il.data.normalize import KeyStats, Normalizer
    from il.policies.base import DataSpec
    from il.train import load_config, policy_class
    from robots.registry import make_robot

    arm = make_robot(f"dynamixel:{port}")  # not connected: its convention is known already
    dim = arm.action_spec.dim
    spec = DataSpec(
        obs_shapes={"obs/joint_pos": [dim]}, action_dim=dim, action=arm.action_spec.to_json()
    )

    def stats(n: int) -> KeyStats:
        return KeyStats(-np.ones(n), np.ones(n), np.zeros(n), np.ones(n), 1)

    normalizer = Normalizer(
        {"obs/joint_pos": stats(dim), "action": stats(dim)},
        {"obs/joint_pos": "mean_std", "action": "min_max"},
    )
    config = load_config("bc", ROOT / "configs" / "bc.yaml")
    return policy_class("bc")(config.model, spec, normalizer).save(folder / "bc")


def run(command: list[str], code: Path = ROOT) -> tuple[float, float, set[str], int]:
    """(wall seconds, import seconds by -X importtime, modules imported, exit code), running
    the il of the checkout `code`."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *command],
        capture_output=True,
        text=True,
        env=env,
        cwd=code,
        timeout=300,
    )
    wall = time.perf_counter() - start
    total_us, modules = 0, set()
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line.split(":", 1)[1].split("|"))
        if not cumulative.isdigit():
            continue  # the header line
        modules.add(name.strip())
        if not line.split("|")[2].startswith("  "):  # a top-level import: its time includes
            total_us += int(cumulative)  # everything it imported in turn
    return wall, total_us / 1e6, modules, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument(
        "--before",
        type=Path,
        default=None,
        help="Another checkout of il (e.g. a git worktree of an older commit): its commands are "
        "timed in the same run, interleaved with this one's.",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = f"{tmp}/no-such-port"
        checkpoint = make_checkpoint(Path(tmp), port)
        deploy = ["-m", "il.cli", "deploy", "--checkpoint", str(checkpoint)]
        deploy += ["--robot", f"dynamixel:{port}"]
        cases = [
            ("baseline: import numpy", ["-c", "import numpy"], ROOT),
            ("il --help", ["-m", "il.cli", "--help"], ROOT),
            ("baseline: import torch", ["-c", "import torch"], ROOT),
            ("il deploy, BC to a servo arm", deploy, ROOT),
        ]
        if args.before is not None:
            cases.insert(2, ("il --help, before", ["-m", "il.cli", "--help"], args.before))
            cases.append(("il deploy, BC to a servo arm, before", deploy, args.before))
        # round-robin, so a machine that gets busier mid-run slows every case alike
        timings: dict[str, list[tuple[float, float, set[str], int]]] = {c[0]: [] for c in cases}
        for _ in range(args.repeats):
            for name, command, code in cases:
                timings[name].append(run(command, code))
        rows = []
        for name, _, _ in cases:
            runs = timings[name]
            modules = runs[-1][2]
            came = [w for w in WATCHED if any(m == w or m.startswith(w + ".") for m in modules)]
            rows.append(
                [
                    name,
                    f"{statistics.median(r[0] for r in runs):.2f}",
                    f"{statistics.median(r[1] for r in runs):.2f}",
                    str(len(modules)),
                    ", ".join(came) or "none",
                    str(runs[-1][3]),
                ]
            )
    print_table(
        f"Start-up of a command, median of {args.repeats} fresh processes ({cpu()})",
        ["command", "wall s", "imports s", "modules", "simulator or methods", "exit"],
        rows,
        args.markdown,
    )


if __name__ == "__main__":
    main()
