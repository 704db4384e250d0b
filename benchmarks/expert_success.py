"""Success of the scripted experts on every task of a suite, over its fixed variations.

The experts are the reference row of every results table and the source of every recorded
demonstration, so their success per task must be known rather than assumed: a task where the
expert fails often yields fewer (and more biased) demonstrations.

    .venv/bin/python benchmarks/expert_success.py                 # MT50, 50 variations, 2 workers
    .venv/bin/python benchmarks/expert_success.py --tasks metaworld/MT10 --variations 10

Variation k is played with `reset(options={"variation": k})`; an episode succeeds when
`info["success"]` is true at any step and stops there. Tasks run in parallel, one worker process
per core (spawned, so no MuJoCo or GL state crosses a fork).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from textwrap import fill as _fill

import metaworld.env_dict
import numpy as np

import envs
from envs.experts import ScriptedExpert
from envs.metaworld import DIFFICULTY, MetaWorldEnv, SuiteTask

MT10: tuple[str, ...] = tuple(metaworld.env_dict.MT10_V3)


def fill(text: str) -> str:
    """A paragraph wrapped at 100 columns, like the rest of the docs."""
    return _fill(text, width=100)


GROUP = {task: group for group, tasks in DIFFICULTY.items() for task in tasks}


@dataclass(frozen=True)
class TaskResult:
    task: str
    successes: tuple[bool, ...]
    steps_to_success: tuple[int, ...]
    phases: int
    seconds: float

    @property
    def success_rate(self) -> float:
        return float(np.mean(self.successes))

    @property
    def mean_steps(self) -> float:
        return float(np.mean(self.steps_to_success)) if self.steps_to_success else float("nan")


def run_task(job: tuple[SuiteTask, int, int, str]) -> TaskResult:
    """Play the expert on variations 0..n-1 of one task (in a worker process)."""
    task, variations, max_steps, suite_name = job
    start = time.perf_counter()
    env = MetaWorldEnv(
        task.name,
        task.variations,
        obs=("state",),
        max_episode_steps=max_steps,
        task_index=task.index,
        suite=suite_name,
    )
    expert = ScriptedExpert(task.name)
    successes, steps_to_success = [], []
    for k in range(variations):
        obs, _ = env.reset(options={"variation": k})
        success = False
        for t in range(max_steps):
            obs, _, terminated, truncated, info = env.step(expert(obs))
            if info["success"]:
                success = True
                steps_to_success.append(t + 1)
                break
            if terminated or truncated:
                break
        successes.append(success)
    env.close()
    return TaskResult(
        task.name,
        tuple(successes),
        tuple(steps_to_success),
        len(expert.phases),
        time.perf_counter() - start,
    )


def table(results: list[TaskResult], args: argparse.Namespace, seconds: float) -> str:
    """The results as a markdown page."""
    by_task = {r.task: r for r in results}
    rates = {t: 100 * r.success_rate for t, r in by_task.items()}
    mean_all = float(np.mean(list(rates.values())))
    mt10 = [rates[t] for t in MT10 if t in rates]
    below = sorted((t for t, rate in rates.items() if rate < 90), key=lambda t: rates[t])
    lines = [
        "# Scripted expert success",
        "",
        fill(
            "`envs.experts.ScriptedExpert(task)` acts exactly as Meta-World's own scripted "
            "policy and also returns its procedure (the positions it parsed, its phase, the "
            "target it steers the hand to, its grab effort) with each action; "
            '`envs.language_motion` turns the motion into phrases such as "move forward and '
            'down". This page measures how often the experts succeed.'
        ),
        "",
        "```python",
        "from envs.experts import ScriptedExpert",
        'expert = ScriptedExpert("pick-place-v3")',
        'action, procedure = expert.act(obs["state"])  # or expert(obs) for the action alone',
        "procedure.phase_name, procedure.target, procedure.as_arrays()",
        "```",
        "",
        fill(
            f"Measured with `benchmarks/expert_success.py --tasks {args.tasks} --variations "
            f"{args.variations} --workers {args.workers}`: variations 0..{args.variations - 1} "
            f"of every task (`reset(options={{'variation': k}})`, benchmark seed 0), episodes "
            f"of at most {args.max_steps} steps, success = `info['success']` at any step (the "
            f"episode stops there). Meta-World {version('metaworld')}, MuJoCo "
            f"{version('mujoco')}; {len(results)} tasks in {seconds / 60:.1f} min with "
            f"{args.workers} worker processes."
        ),
        "",
        f"- **Mean success over {args.tasks.split('/')[-1]} ({len(rates)} tasks): "
        f"{mean_all:.1f}%**",
    ]
    if mt10 and len(mt10) < len(rates):
        lines.append(
            f"- **Mean success over the MT10 tasks ({len(mt10)} tasks, same runs): "
            f"{np.mean(mt10):.1f}%**"
        )
    lines.append(
        "- Tasks below 90%: "
        + (", ".join(f"`{t}` ({rates[t]:.0f}%)" for t in below) if below else "none")
    )
    lines += [
        "",
        fill(
            "Steps = mean episode length to the first success, over the successful episodes. "
            "Phases = number of branches of the policy's state machine (`len(expert.phases)`). "
            "Failed = the variations where the expert did not succeed."
        ),
        "",
        "| task | group | MT10 | success % | steps to success | phases | failed |",
        "| --- | --- | :-: | --: | --: | --: | --- |",
    ]
    for task in sorted(by_task):
        r = by_task[task]
        steps = f"{r.mean_steps:.0f}" if r.steps_to_success else "–"
        failed = " ".join(str(k) for k, ok in enumerate(r.successes) if not ok)
        lines.append(
            f"| {task} | {GROUP.get(task, '')} | {'✓' if task in MT10 else ''} | "
            f"{rates[task]:.0f} | {steps} | {r.phases} | {failed} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="metaworld/MT50", help="suite name")
    parser.add_argument("--variations", type=int, default=50, help="variations per task")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--max-steps", type=int, default=500, help="episode length")
    parser.add_argument("--out", default="docs/experts.md", help="markdown file to write")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    suite = envs.suite(args.tasks)
    for task in suite.tasks:
        if len(task.variations) < args.variations:
            parser.error(f"{task.name} has only {len(task.variations)} variations")
    print(f"{suite.name}: {len(suite)} tasks, loaded in {time.perf_counter() - start:.0f}s")
    jobs = [(t, args.variations, args.max_steps, suite.name) for t in suite.tasks]
    results: list[TaskResult] = []
    with mp.get_context("spawn").Pool(args.workers) as pool:
        for r in pool.imap_unordered(run_task, jobs):
            results.append(r)
            print(
                f"[{len(results):2d}/{len(jobs)}] {r.task:30s} {100 * r.success_rate:5.1f}% "
                f"steps {r.mean_steps:5.1f}  ({r.seconds:.0f}s)",
                flush=True,
            )
    page = table(results, args, time.perf_counter() - start)
    print()
    print(page)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MUJOCO_GL", "egl")
    raise SystemExit(main())
