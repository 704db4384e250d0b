"""Fast offscreen rendering for MuJoCo environments.

Learning from pixels renders every step of every episode, so the renderer sits on the hot path
of recording and evaluation. Meta-World's default `render()` draws shadows from a 4096² shadow
map, reflections and 4× multisampling, which on a software GL (EGL on a CPU box) costs more than
ten times the frame itself. Here one renderer per environment is created lazily in the process
that uses it (safe under `fork`/`spawn` vector envs), reused for every camera and frame, and the
expensive effects are off unless asked for.

MuJoCo's GL context frees itself in `__del__`; at interpreter shutdown EGL may already be gone and
that prints a traceback. Every live renderer is therefore closed from an `atexit` hook, which runs
before module teardown. MuJoCo's EGL backend registers its own `eglTerminate` hook when it creates
its first context; hooks run last-registered first, so ours is registered again after every
context is created, to run before the display is terminated.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import weakref
from dataclasses import dataclass

if sys.platform.startswith("linux"):
    os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco
import numpy as np

__all__ = ["RenderOptions", "Renderer"]


@dataclass(frozen=True)
class RenderOptions:
    """Visual effects of the offscreen renderer. All off by default: they cost time and add
    nothing a policy needs; turn them on for videos meant for people."""

    shadows: bool = False
    """Shadow mapping (Meta-World's default uses a 4096² shadow map)."""
    reflections: bool = False
    """Mirror reflections of reflective materials (the table top)."""
    antialias: bool = False
    """4× multisample anti-aliasing."""
    skybox: bool = False
    """Draw the skybox behind the scene."""

    @classmethod
    def pretty(cls) -> RenderOptions:
        """Every effect on, as Meta-World renders by default: for videos."""
        return cls(shadows=True, reflections=True, antialias=True, skybox=True)


_LIVE: weakref.WeakSet[Renderer] = weakref.WeakSet()


def _close_all() -> None:
    for renderer in list(_LIVE):
        renderer.close()


def _close_all_first_at_exit() -> None:
    """(Re-)register `_close_all` so that it runs before every exit hook registered so far, in
    particular MuJoCo's `eglTerminate`, registered when the first EGL context is made."""
    atexit.unregister(_close_all)
    atexit.register(_close_all)


def _egl_if_imported_too_early() -> None:
    """Switch MuJoCo to EGL where `import envs` asked for it too late.

    MuJoCo picks its GL backend once, when it is first imported. A program (or a test module)
    that imports `mujoco` before `envs` on a Linux box without a display gets GLFW, which cannot
    open a window and fails with an obscure "OpenGL platform library has not been loaded". The
    mismatch is recognisable: `MUJOCO_GL` says `egl` (set here or by the user) while the chosen
    backend is GLFW; then EGL is what was meant.
    """
    if not sys.platform.startswith("linux") or os.environ.get("MUJOCO_GL", "").lower() != "egl":
        return
    from mujoco import gl_context

    backend = getattr(gl_context, "GLContext", None)
    if backend is not None and backend.__module__.startswith("mujoco.glfw"):
        from mujoco.egl import GLContext

        gl_context.GLContext = GLContext


_egl_if_imported_too_early()


class Renderer:
    """One reusable offscreen renderer bound to a model; renders any of its cameras.

    The GL context is created on the first call, not in `__init__`, so an environment can be
    built in one process and stepped in another.
    """

    def __init__(
        self, model: mujoco.MjModel, width: int, height: int, options: RenderOptions | None = None
    ) -> None:
        if width <= 0 or height <= 0:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        self.model = model
        self.width = int(width)
        self.height = int(height)
        self.options = options or RenderOptions()
        self._renderer: mujoco.Renderer | None = None
        self._owner_pid: int | None = None

    def _ensure(self) -> mujoco.Renderer:
        if self._renderer is not None and self._owner_pid == os.getpid():
            return self._renderer
        # A renderer inherited through fork holds a context of the parent: never touch it.
        self._renderer = None
        vis = self.model.vis
        # The GL context reads these from the shared model when it is made; put them back
        # afterwards so that another renderer of the same model (say a pretty one for videos)
        # still finds the model's own shadow map size.
        saved = (int(vis.quality.offsamples), int(vis.quality.shadowsize))
        vis.quality.offsamples = 4 if self.options.antialias else 0
        if not self.options.shadows:
            vis.quality.shadowsize = 0
        vis.global_.offwidth = max(int(vis.global_.offwidth), self.width)
        vis.global_.offheight = max(int(vis.global_.offheight), self.height)
        try:
            renderer = mujoco.Renderer(self.model, self.height, self.width)
        finally:
            vis.quality.offsamples, vis.quality.shadowsize = saved
        flags = renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = self.options.shadows
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = self.options.reflections
        flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = self.options.skybox
        self._renderer = renderer
        self._owner_pid = os.getpid()
        _LIVE.add(self)
        _close_all_first_at_exit()
        return renderer

    def render(self, data: mujoco.MjData, camera: str | int) -> np.ndarray:
        """RGB image `(h w 3)` uint8 of `camera` for the state in `data`; a fresh array."""
        renderer = self._ensure()
        renderer.update_scene(data, camera=camera)
        return renderer.render()

    def depth(self, data: mujoco.MjData, camera: str | int) -> np.ndarray:
        """Depth `(h w)` float32 in metres along the camera's optical axis, as a depth camera
        reports it; where nothing is in view, the far clipping plane's distance."""
        renderer = self._ensure()
        renderer.enable_depth_rendering()
        try:
            renderer.update_scene(data, camera=camera)
            return renderer.render()
        finally:
            renderer.disable_depth_rendering()

    def segmentation(self, data: mujoco.MjData, camera: str | int) -> np.ndarray:
        """Per-pixel `(object id, object type)` `(h w 2)` int32; id -1 is background."""
        renderer = self._ensure()
        renderer.enable_segmentation_rendering()
        try:
            renderer.update_scene(data, camera=camera)
            return renderer.render()
        finally:
            renderer.disable_segmentation_rendering()

    def close(self) -> None:
        """Free the GL context now (idempotent)."""
        renderer, self._renderer = self._renderer, None
        if renderer is not None and self._owner_pid == os.getpid():
            renderer.close()
        _LIVE.discard(self)

    def __del__(self) -> None:
        # Closing here (not at GC of the mujoco object) keeps teardown order under our control.
        with contextlib.suppress(Exception):
            self.close()
