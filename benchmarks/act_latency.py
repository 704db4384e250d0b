"""Latency of `policy.act(observation)` on a CPU, per policy, against a 30 Hz control loop.

A policy deployed on an arm must answer within its control period; a third of a 30 Hz period
(11.1 ms) leaves the rest for the camera, the driver and the safety filter. `act()` is timed as a
deployment calls it: one observation in, one action out, everything between (history,
normalization, network, denoising, the chunk queue) included. With action chunks most calls pop
a queued action and a few run the network, so p99 is the figure that matters; the time of the
calls that run the network ("predict") is shown too.

Policies are built from the presets in `configs/` for MT10 from state (39-d state, 4-d action,
10 tasks), with random weights: latency does not depend on what the weights are. Observations
come from a real Meta-World episode stepped with the returned actions. torch runs with 1 thread
(as in `il eval`'s workers, one env per core) and with the machine's default.

    .venv/bin/python benchmarks/act_latency.py
    .venv/bin/python benchmarks/act_latency.py --calls 2000 --markdown
"""

from __future__ import annotations

import argparse
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from report import cpu, print_table

import envs
from il.data.normalize import KeyStats, Normalizer
from il.policies.base import DataSpec, Policy
from il.train import load_config, policy_class

ROOT = Path(__file__).resolve().parents[1]
BUDGET_MS = 1000 / 30 / 3


def build(policy: str, overrides: list[str]) -> Policy:
    """A policy of the preset `configs/<policy>.yaml` for MT10 from state, random weights."""
    config = load_config(policy, ROOT / "configs" / f"{policy}.yaml", overrides)
    tasks = list(envs.suite("metaworld/MT10").task_names)
    spec = DataSpec(obs_shapes={"obs/state": [39]}, action_dim=4, tasks=tasks)

    def stats(dim: int) -> KeyStats:
        return KeyStats(-np.ones(dim), np.ones(dim), np.zeros(dim), np.ones(dim), 1)

    normalizer = Normalizer(
        {"obs/state": stats(39), "action": stats(4)}, {"obs/state": "mean_std", "action": "min_max"}
    )
    return policy_class(policy)(config.model, spec, normalizer).eval()


def time_calls(
    policy: Policy, calls: int, hz: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Seconds of each `act()` call, and whether it ran the network. With `hz`, calls are
    paced as a control loop makes them (needed for act-ahead: its prediction runs between
    calls)."""
    env = envs.make("metaworld/pick-place-v3")
    obs, _ = env.reset(seed=0)
    policy.reset(task="pick-place-v3")
    predicted = []
    original = policy.predict_chunk

    def spy(*args, **kwargs):
        predicted[-1] = True
        return original(*args, **kwargs)

    policy.predict_chunk = spy  # type: ignore[method-assign]
    seconds = []
    deadline = time.perf_counter()
    for i in range(calls + 20):
        if hz:
            deadline += 1.0 / hz
        predicted.append(False)
        start = time.perf_counter()
        action = policy.act(obs)
        elapsed = time.perf_counter() - start
        if i >= 20:  # warm-up: first calls allocate
            seconds.append(elapsed)
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            obs, _ = env.reset(seed=i)
            policy.reset(task="pick-place-v3")
        if hz:
            time.sleep(max(0.0, deadline - time.perf_counter()))
    env.close()
    return np.array(seconds), np.array(predicted[20:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="timed act() calls per policy")
    parser.add_argument("--markdown", action="store_true", help="markdown tables")
    args = parser.parse_args()

    # (label, preset, overrides, act-ahead steps: paced at 30 Hz when > 0)
    cases = [
        ("bc (configs/bc.yaml)", "bc", []),
        ("bc, 16-step chunks, temporal ensembling", "bc", [
            "model.action_horizon=16", "model.temporal_ensemble=0.01"]),
        ("diffusion (configs/diffusion.yaml), DDIM 10", "diffusion", []),
        ("diffusion, paper-size U-Net 256-512-1024, DDIM 10", "diffusion", [
            "model.down_dims=[256,512,1024]"]),
        ("diffusion (configs/diffusion.yaml), DDIM 10, act-ahead 4 at 30 Hz", "diffusion", [],
         4),
    ]  # fmt: skip
    default_threads = torch.get_num_threads()
    rows = []
    for threads in (1, default_threads):
        torch.set_num_threads(threads)
        for label, name, overrides, *ahead in cases:
            policy = build(name, overrides)
            policy.set_act_ahead(ahead[0] if ahead else 0)
            hz = 30.0 if policy.act_ahead else None
            seconds, predicted = time_calls(policy, args.calls, hz)
            ms = seconds * 1000
            p99 = float(np.percentile(ms, 99))
            rows.append(
                [
                    label,
                    str(threads),
                    f"{sum(p.numel() for p in policy.parameters()) / 1e6:.2f}",
                    f"{np.percentile(ms, 50):.2f}",
                    f"{p99:.2f}",
                    "on its thread"
                    if policy.act_ahead
                    else f"{np.median(ms[predicted]):.2f}"
                    if predicted.any()
                    else "-",
                    "paced 30 Hz" if hz else "back to back",
                    f"{predicted.mean():.3f}",
                    "yes" if p99 < BUDGET_MS else "no",
                ]
            )
        if default_threads == 1:
            break
    print(f"CPU: {cpu()}; torch {version('torch')}; {args.calls} calls each")
    print_table(
        f"act() latency in ms (budget: p99 < {BUDGET_MS:.1f} ms, a third of a 30 Hz period)",
        [
            "policy",
            "threads",
            "M params",
            "p50",
            "p99",
            "predict",
            "calls",
            "predict share",
            "in budget",
        ],
        rows,
        args.markdown,
    )


if __name__ == "__main__":
    main()
