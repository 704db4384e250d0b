"""Long checks (minutes on 2 cores), run with `make test-slow`: whole suites and a whole
record → sample → DataLoader pass on real recordings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from il.data import DemoStore, Normalizer, WindowDataset, WindowSampler, window_spec

pytestmark = pytest.mark.slow
IL = [sys.executable, "-m", "il.cli"]
ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_experts_solve_mt50(tmp_path):
    """The scripted experts stay near their measured 98% over all 50 tasks (docs/experts.md)."""
    out = tmp_path / "mt50.json"
    run(*IL, "eval", "--policy", "expert", "--env", "metaworld/MT50", "--episodes-per-task", "4",
        "--json", str(out))  # fmt: skip
    report = json.loads(out.read_text())
    rates = [t["success_rate"] for t in report["tasks"].values()]
    assert len(rates) == 50
    assert np.mean(rates) >= 0.93


def test_recorded_mt10_images_train_through_a_dataloader(tmp_path):
    """A real image recording of MT10 feeds a spawned-worker DataLoader with normalized
    windows that match the store."""
    out = str(tmp_path / "mt10.zarr")
    cameras = "state,image/corner,image/corner2"
    run(*IL, "record", "--env", "metaworld/MT10", "--episodes-per-task", "2",
        "--obs", cameras, "--image-size", "64", "--out", out)  # fmt: skip
    store = DemoStore.open(out)
    assert store.num_episodes == 20
    keys = window_spec(["obs/state", "obs/image/corner", "obs/image/corner2"], 2, ["action"], 16)
    sampler = WindowSampler(store, keys, memory_bytes=0)
    norm = Normalizer.from_store(store, {"obs/state": "mean_std", "action": "min_max"})
    loader = torch.utils.data.DataLoader(
        WindowDataset(sampler),
        batch_size=64,
        shuffle=True,
        num_workers=2,
        multiprocessing_context="spawn",
        generator=torch.Generator().manual_seed(0),
    )
    seen = 0
    for batch in loader:
        assert batch["obs/image/corner"].shape[1:] == (2, 64, 64, 3)
        action = norm.normalize("action", batch["action"])
        assert action.abs().max() <= 1 + 1e-5
        seen += len(batch["action"])
    assert seen == store.num_steps


def test_store_benchmark_runs(tmp_path):
    """The benchmark script itself, at a small size: it checks every reader's windows equal."""
    text = run(
        sys.executable, "benchmarks/store.py", "--steps", "1500", "--windows", "100",
        "--repeats", "1", "--episodes-per-task", "1", "--no-sweep",
    )  # fmt: skip
    assert "il WindowSampler" in text
