"""Frames per second of camera observations: Meta-World's default render path against ours.

Learning from pixels renders every step, so frames per second bound how fast demonstrations are
recorded and policies evaluated. Both paths are measured in the same run, on the same tasks,
state sequence and camera, so the ratio does not depend on the machine of the day:

- default: `ALL_V3_ENVIRONMENTS[task](render_mode="rgb_array", camera_name=..., width, height)`
  with `MT1(task, seed=0).train_tasks[0]`, `env.render()` after each `env.step` (shadows from a
  4096² map, reflections, 4× MSAA, skybox: Meta-World's defaults);
- ours: `envs.make(f"metaworld/{task}", obs=("image/<camera>",))`, the image read from each
  `step`'s observation (one reusable renderer per env, effects off).

Each is timed with and without stepping the physics ("render only": the same state rendered
again, i.e. the renderer alone). Timing: `time.perf_counter` around `--frames` frames, after a
warm-up; the median over `--repeats` repeats, which are interleaved across paths so that drift of
the machine hits all paths alike. Our frames are also checked to be bit-identical across repeats
and across two fresh environments. An ablation times our renderer with each effect turned on.

    .venv/bin/python benchmarks/render.py                       # 84x84, corner, two tasks
    .venv/bin/python benchmarks/render.py --size 128 --camera corner2 --frames 200
    .venv/bin/python benchmarks/render.py --markdown             # tables for docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version

import metaworld
import metaworld.env_dict
import numpy as np
from report import cpu, print_table

import envs  # first: selects headless EGL before MuJoCo is imported
from envs import Renderer, RenderOptions

DEFAULT_TASKS = ("pick-place-v3", "drawer-open-v3")


@dataclass
class Timed:
    """One thing to time: `reset` (untimed) before each repeat, then `frame(i)` per frame."""

    name: str
    reset: Callable[[], None]
    frame: Callable[[int], np.ndarray]
    seconds: list[float] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)

    def run(self, frames: int, keep: bool = False) -> None:
        self.reset()
        images = []
        start = time.perf_counter()
        for i in range(frames):
            image = self.frame(i)
            if keep:
                images.append(image)
        self.seconds.append(time.perf_counter() - start)
        if keep:
            self.digests.append(digest(images))

    def fps(self, frames: int) -> float:
        return frames / statistics.median(self.seconds)


def digest(images: list[np.ndarray]) -> str:
    """SHA-256 over a sequence of frames, to compare runs bit for bit."""
    h = hashlib.sha256()
    for image in images:
        h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def default_env(task: str, camera: str, size: int):
    """Meta-World's own env and render path, exactly as its README sets it up."""
    env = metaworld.env_dict.ALL_V3_ENVIRONMENTS[task](
        render_mode="rgb_array", camera_name=camera, width=size, height=size
    )
    env.set_task(metaworld.MT1(task, seed=0).train_tasks[0])
    return env


def stepper(env, actions: np.ndarray, reset: Callable[[], object]) -> Callable[[int], None]:
    """Step `env` with `actions[i]`; a truncated episode (500 steps) is reset, as Meta-World
    refuses to step past it."""

    def step(i: int) -> None:
        truncated = env.step(actions[i % len(actions)])[3]
        if truncated:
            reset()

    return step


def timed_paths(
    task: str, camera: str, size: int, actions: np.ndarray
) -> tuple[list[Timed], Callable[[], None]]:
    """The four measurements of one task and a function that frees their environments."""
    key = f"image/{camera}"
    raw = default_env(task, camera, size)
    ours = envs.make(f"metaworld/{task}", obs=(key,), image_size=size)
    alone = Renderer(ours.model, size, size)
    raw_step = stepper(raw, actions, raw.reset)

    def raw_reset() -> None:
        raw.reset()
        # Gymnasium's offscreen viewer renders into whatever GL context is current and makes its
        # own current only when it has several; ours were current last, so switch back (else
        # Meta-World draws into our context, wrongly and deceptively fast).
        raw.mujoco_renderer._get_viewer("rgb_array").make_context_current()

    def raw_step_render(i: int) -> np.ndarray:
        raw_step(i)
        return raw.render()

    def ours_step_image(i: int) -> np.ndarray:
        obs, _, _, truncated, _ = ours.step(actions[i % len(actions)])
        if truncated:
            ours.reset(seed=0)
        return obs[key]

    def close() -> None:
        alone.close()
        ours.close()
        raw.close()

    paths = [
        Timed("default: step + render", raw_reset, raw_step_render),
        Timed("default: render only", raw_reset, lambda i: raw.render()),
        Timed("ours: step + image", lambda: ours.reset(seed=0), ours_step_image),
        Timed(
            "ours: render only",
            lambda: ours.reset(seed=0),
            lambda i: alone.render(ours.data, camera),
        ),
    ]
    return paths, close


def ours_frames(task: str, camera: str, size: int, actions: np.ndarray, frames: int) -> str:
    """Digest of our frames from a fresh environment (determinism across environments)."""
    key = f"image/{camera}"
    env = envs.make(f"metaworld/{task}", obs=(key,), image_size=size)
    try:
        env.reset(seed=0)
        return digest([env.step(actions[i % len(actions)])[0][key] for i in range(frames)])
    finally:
        env.close()


ABLATION: tuple[tuple[str, RenderOptions], ...] = (
    ("none (ours, default)", RenderOptions()),
    ("shadows", RenderOptions(shadows=True)),
    ("reflections", RenderOptions(reflections=True)),
    ("antialias (4x MSAA)", RenderOptions(antialias=True)),
    ("skybox", RenderOptions(skybox=True)),
    ("all (RenderOptions.pretty())", RenderOptions.pretty()),
)


def ablation(task: str, camera: str, size: int, frames: int, repeats: int) -> list[Timed]:
    """Our renderer alone with each effect on, on one state."""
    env = envs.make(f"metaworld/{task}", obs=("state",), seed=0)
    renderers = [Renderer(env.model, size, size, options) for _, options in ABLATION]
    paths = [
        Timed(name, lambda: None, lambda i, r=r: r.render(env.data, camera))
        for (name, _), r in zip(ABLATION, renderers, strict=True)
    ]
    try:
        for path in paths:
            for i in range(5):
                path.frame(i)
        for _ in range(repeats):
            for path in paths:
                path.run(frames)
    finally:
        for r in renderers:
            r.close()
        env.close()
    return paths


def gl_renderer() -> str:
    """The GL_RENDERER string of a fresh context of ours (llvmpipe = Mesa's software GL)."""
    env = envs.make("metaworld/reach-v3", obs=("state",))
    renderer = Renderer(env.model, 8, 8)
    try:
        renderer.render(env.data, "corner")  # makes its context current in this thread
        from OpenGL import GL

        return " / ".join(GL.glGetString(name).decode() for name in (GL.GL_RENDERER, GL.GL_VERSION))
    except Exception as err:  # the benchmark still stands without the string
        return f"unknown ({type(err).__name__})"
    finally:
        renderer.close()
        env.close()


def machine() -> str:
    return (
        f"{cpu()}; GL: {gl_renderer()} (MUJOCO_GL={os.environ.get('MUJOCO_GL')}); "
        f"Python {platform.python_version()}, MuJoCo {version('mujoco')}, "
        f"Meta-World {version('metaworld')}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=84, help="image side in pixels")
    parser.add_argument("--frames", type=int, default=100, help="frames per timed repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
    parser.add_argument("--camera", default="corner", choices=envs.CAMERAS)
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS))
    parser.add_argument("--no-ablation", action="store_true", help="skip the effects ablation")
    parser.add_argument("--markdown", action="store_true", help="print markdown tables")
    args = parser.parse_args(argv)

    print(f"machine: {machine()}")
    print(
        f"setting: {args.size}x{args.size} px, camera {args.camera!r}, {args.frames} frames x "
        f"{args.repeats} repeats (median), warm-up 10 frames"
    )
    actions = np.random.default_rng(0).uniform(-1, 1, size=(500, 4))
    rows: list[list[str]] = []
    identical: list[str] = []
    ratios: dict[str, list[float]] = {"step": [], "render": []}
    for task in args.tasks:
        paths, close = timed_paths(task, args.camera, args.size, actions)
        try:
            for path in paths:
                path.reset()
                for i in range(10):
                    path.frame(i)
            for _ in range(args.repeats):
                for path in paths:
                    path.run(args.frames, keep=path.name == "ours: step + image")
        finally:
            close()
        fresh = ours_frames(task, args.camera, args.size, actions, args.frames)
        ours_digests = paths[2].digests
        same = len(set(ours_digests)) == 1 and ours_digests[0] == fresh
        identical.append(
            f"{task}: {'bit-identical' if same else 'DIFFERENT'} across {len(ours_digests)} "
            f"repeats and a fresh env (sha256 {fresh[:12]})"
        )
        fps = {p.name: p.fps(args.frames) for p in paths}
        step_ratio = fps["ours: step + image"] / fps["default: step + render"]
        render_ratio = fps["ours: render only"] / fps["default: render only"]
        ratios["step"].append(step_ratio)
        ratios["render"].append(render_ratio)
        rows.append(
            [
                task,
                f"{fps['default: step + render']:.1f}",
                f"{fps['ours: step + image']:.1f}",
                f"{step_ratio:.1f}x",
                f"{fps['default: render only']:.1f}",
                f"{fps['ours: render only']:.1f}",
                f"{render_ratio:.1f}x",
            ]
        )
    header = [
        "task",
        "default step+render fps",
        "ours step+image fps",
        "ratio",
        "default render fps",
        "ours render fps",
        "ratio",
    ]
    print_table(
        f"Frames per second at {args.size}x{args.size}, camera {args.camera}",
        header,
        rows,
        args.markdown,
    )
    for line in identical:
        print(line)
    print(
        f"ratio ours/default (geometric mean over tasks): step + image "
        f"{statistics.geometric_mean(ratios['step']):.1f}x, render only "
        f"{statistics.geometric_mean(ratios['render']):.1f}x"
    )

    if not args.no_ablation:
        paths = ablation(args.tasks[0], args.camera, args.size, args.frames, args.repeats)
        base = paths[0].fps(args.frames)
        ablation_rows = [
            [
                p.name,
                f"{p.fps(args.frames):.1f}",
                f"{1e3 / p.fps(args.frames):.2f}",
                f"{1e3 / p.fps(args.frames) - 1e3 / base:+.2f}",
            ]
            for p in paths
        ]
        print_table(
            f"Our renderer alone, one effect at a time ({args.tasks[0]}, {args.size}x{args.size})",
            ["effects on", "fps", "ms/frame", "cost ms/frame"],
            ablation_rows,
            args.markdown,
        )
    return 0 if all("bit-identical" in line for line in identical) else 1


if __name__ == "__main__":
    sys.exit(main())
