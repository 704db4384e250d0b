"""Light imports: a command pays for what it runs. `il --help` imports neither torch nor a
simulator; a deployment of a BC checkpoint to a real arm imports neither Meta-World, MuJoCo,
the scripted experts nor any paper method. Checked on the real commands in fresh processes,
from the interpreter's own list of what it imported (`python -X importtime`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from il.data.normalize import KeyStats, Normalizer
from il.policies.base import DataSpec
from il.train import load_config, policy_class
from robots.registry import make_robot

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("metaworld", "mujoco", "envs.experts", "il.methods")


def imported(*args: str) -> tuple[set[str], subprocess.CompletedProcess]:
    """The modules `il ARGS` imports, and its result."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "il.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }
    return modules, proc


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_il_help_imports_no_torch_and_no_simulator() -> None:
    modules, proc = imported("--help")
    assert proc.returncode == 0 and "deploy" in proc.stdout
    assert not heavy(modules) and "torch" not in modules


def test_deploying_bc_to_a_real_arm_imports_no_simulator_and_no_other_method(tmp_path) -> None:
    port = tmp_path / "ttyUSB-unplugged"
    arm = make_robot(f"dynamixel:{port}")  # its convention is known before it connects
    dim = arm.action_spec.dim
    spec = DataSpec({"obs/joint_pos": [dim]}, dim, action=arm.action_spec.to_json())
    ones = KeyStats(-np.ones(dim), np.ones(dim), np.zeros(dim), np.ones(dim), 1)
    normalizer = Normalizer(
        {"obs/joint_pos": ones, "action": ones}, {"obs/joint_pos": "mean_std", "action": "min_max"}
    )
    config = load_config("bc", None, ["model.hidden=[16]"])
    checkpoint = policy_class("bc")(config.model, spec, normalizer).save(tmp_path / "bc")

    modules, proc = imported(
        "deploy", "--checkpoint", str(checkpoint), "--robot", f"dynamixel:{port}"
    )
    # it got as far as opening the arm: the checkpoint was read and the policy built
    assert proc.returncode == 2 and "no serial port" in proc.stderr, proc.stderr
    assert {"il.policies.blocks", "torch", "robots.servo.arm"} <= modules
    assert heavy(modules) == []
