"""Steps per second of `il eval` against raw single-env stepping times the number of workers.

Evaluation should cost what stepping the simulator costs, no more: spreading tasks over worker
processes should multiply throughput by the number of workers. Both figures come from the same
run, with the same policy (the scripted experts, so that the policy's own cost is the same on
both sides), tasks and seeds:

- raw: one process, one env per task made up front, a plain loop of `reset(seed=k)`,
  `policy.act(obs)`, `env.step(action)` until the episode ends, over every episode;
- il eval: `il.evaluate.evaluate(suite, ..., workers=W)`, timed as a whole: spawning the
  workers, building their envs, stepping and collecting results.

The ratio is `il eval steps/s ÷ (raw steps/s × W)`; the target is at least 0.8.

    .venv/bin/python benchmarks/eval_speed.py                      # MT10, 10 episodes per task
    .venv/bin/python benchmarks/eval_speed.py --workers 2 --episodes-per-task 20 --markdown
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from importlib.metadata import version

from report import cpu, print_table

import envs
from il.evaluate import evaluate
from il.policies.expert import ExpertPolicy, expert_for_task


def raw_steps(suite: envs.Suite, episodes_per_task: int, max_steps: int) -> tuple[int, float]:
    """Plain single-process stepping of every episode of the suite with the experts: steps and
    seconds."""
    options = {"max_episode_steps": max_steps, "terminate_on_success": True}
    made = [(envs.make(f"metaworld/{t.name}", **options), ExpertPolicy(t)) for t in suite]
    steps = 0
    start = time.perf_counter()
    for env, expert in made:
        for k in range(episodes_per_task):
            obs, _ = env.reset(seed=k)
            expert.reset()  # the same calls il eval makes
            done = False
            while not done:
                obs, _, terminated, truncated, _ = env.step(expert.act(obs))
                steps += 1
                done = terminated or truncated
    seconds = time.perf_counter() - start
    for env, _ in made:
        env.close()
    return steps, seconds


def _raw_whole(args: tuple[str, int, int]) -> tuple[int, float]:
    name, episodes_per_task, max_steps = args
    return raw_steps(envs.suite(name), episodes_per_task, max_steps)


def raw_parallel(suite: envs.Suite, workers: int, episodes: int, max_steps: int) -> float:
    """The same plain loop over the whole suite in `workers` processes at once: what the
    machine's cores deliver together when nothing is shared and no process waits for another
    (cores that share a physical core or a memory bus do not add up to `workers` times one).
    Only the stepping is timed, not starting the processes."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers) as pool:
        results = pool.map(_raw_whole, [(suite.name, episodes, max_steps)] * workers)
    return sum(steps for steps, _ in results) / max(seconds for _, seconds in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="metaworld/MT10")
    parser.add_argument("--episodes-per-task", type=int, default=10)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--max-episode-steps", type=int, default=500)
    parser.add_argument("--markdown", action="store_true", help="markdown tables")
    args = parser.parse_args()

    suite = envs.suite(args.suite)
    steps, seconds = raw_steps(suite, args.episodes_per_task, args.max_episode_steps)
    raw = steps / seconds
    rows = [["raw single-env loop, 1 process", "1", f"{raw:,.0f}", "", ""]]
    if args.workers > 1:
        ceiling = raw_parallel(suite, args.workers, args.episodes_per_task, args.max_episode_steps)
        rows.append(
            [
                f"raw loop in {args.workers} processes at once, same work each (stepping only)",
                str(args.workers),
                f"{ceiling:,.0f}",
                f"{raw * args.workers:,.0f}",
                f"{ceiling / (raw * args.workers):.2f}",
            ]
        )
    for workers in sorted({1, args.workers}):
        report = evaluate(
            suite,
            expert_for_task,
            episodes_per_task=args.episodes_per_task,
            workers=workers,
            max_episode_steps=args.max_episode_steps,
        )
        ratio = report.steps_per_second / (raw * workers)
        rows.append(
            [
                "il eval (whole run)",
                str(workers),
                f"{report.steps_per_second:,.0f}",
                f"{raw * workers:,.0f}",
                f"{ratio:.2f}",
            ]
        )
    print(
        f"CPU: {cpu()}; {suite.name}, {args.episodes_per_task} episodes per task, scripted "
        f"experts; mujoco {version('mujoco')}, metaworld {version('metaworld')}"
    )
    print_table(
        "Evaluation throughput (target: ratio ≥ 0.8)",
        ["path", "workers", "steps/s", "raw × workers", "ratio"],
        rows,
        args.markdown,
    )


if __name__ == "__main__":
    main()
