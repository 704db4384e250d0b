"""The offscreen renderer: image format, effects, lifetime, process exit and vector envs.

Rendering runs in every step of recording and evaluation, in the main process and in spawned
workers, so besides producing images it must be safe to close at any time, must not spill
tracebacks when a script exits without closing, and must work inside `AsyncVectorEnv`.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import envs
from envs import Renderer, RenderOptions


@pytest.fixture(scope="module")
def env():
    env = envs.make("metaworld/pick-place-v3", obs=("state",), image_size=64, seed=0)
    yield env
    env.close()


@pytest.mark.parametrize(("width", "height"), [(84, 84), (64, 48), (200, 120)])
def test_renderer_returns_uint8_rgb(env, width, height):
    renderer = Renderer(env.model, width, height)
    try:
        for camera in ("corner", "corner2", "topview"):
            image = renderer.render(env.data, camera)
            assert image.shape == (height, width, 3) and image.dtype == np.uint8
            assert image.std() > 10  # a scene, not a blank frame
        # Fresh arrays: a later frame does not overwrite an earlier one.
        first = renderer.render(env.data, "corner")
        kept = first.copy()
        renderer.render(env.data, "corner2")
        np.testing.assert_array_equal(first, kept)
    finally:
        renderer.close()


def test_bad_size_is_a_one_line_error(env):
    with pytest.raises(ValueError, match="must be positive") as err:
        Renderer(env.model, 0, 84)
    assert "\n" not in str(err.value)


def test_pretty_renders_and_differs(env):
    plain = Renderer(env.model, 84, 84)
    pretty = Renderer(env.model, 84, 84, RenderOptions.pretty())
    try:
        a = plain.render(env.data, "corner")
        b = pretty.render(env.data, "corner")
        assert b.shape == (84, 84, 3) and b.dtype == np.uint8
        assert not np.array_equal(a, b)  # shadows, reflections and AA change the picture
    finally:
        plain.close()
        pretty.close()


def test_renderers_leave_the_shared_model_as_it_was(env):
    """A fast renderer switches shadows off only for its own context: a pretty renderer of the
    same model made afterwards still gets the model's shadow map and draws the same picture as
    one made on an untouched model."""
    quality = env.model.vis.quality
    before = (int(quality.shadowsize), int(quality.offsamples))
    plain = Renderer(env.model, 84, 84)
    plain.render(env.data, "corner")
    assert (int(quality.shadowsize), int(quality.offsamples)) == before
    pretty_after_plain = Renderer(env.model, 84, 84, RenderOptions.pretty())
    other = envs.make("metaworld/pick-place-v3", obs=("state",), seed=0)
    pretty_alone = Renderer(other.model, 84, 84, RenderOptions.pretty())
    try:
        env.reset(seed=0)
        np.testing.assert_array_equal(
            pretty_after_plain.render(env.data, "corner"),
            pretty_alone.render(other.data, "corner"),
        )
    finally:
        for r in (plain, pretty_after_plain, pretty_alone):
            r.close()
        other.close()


@pytest.mark.parametrize("effect", ["shadows", "reflections", "antialias", "skybox"])
def test_each_effect_renders(env, effect):
    renderer = Renderer(env.model, 48, 48, RenderOptions(**{effect: True}))
    try:
        image = renderer.render(env.data, "corner")
        assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    finally:
        renderer.close()


def test_close_is_idempotent_and_segmentation_works(env):
    renderer = Renderer(env.model, 32, 32)
    seg = renderer.segmentation(env.data, "corner")
    assert seg.shape == (32, 32, 2) and seg.dtype == np.int32
    assert (seg[..., 0] == -1).any() and (seg[..., 0] >= 0).any()
    # Segmentation mode is switched off again afterwards.
    assert renderer.render(env.data, "corner").std() > 10
    renderer.close()
    renderer.close()
    closable = envs.make("metaworld/reach-v3", obs=("image/corner",), image_size=32, seed=0)
    closable.close()
    closable.close()


def test_exit_without_close_prints_no_traceback():
    """MuJoCo's EGL backend terminates its display from an exit hook; renderers still open then
    must be closed before it, or every one of them prints an EGLError at exit."""
    code = textwrap.dedent(
        """
        import mujoco  # before envs on purpose: MuJoCo then picks its GL backend on its own
        import numpy as np
        import envs
        from envs import Renderer, RenderOptions

        env = envs.make("metaworld/reach-v3", obs=("image/corner", "image/corner2"),
                        image_size=32, seed=0)
        env.step(np.zeros(4))
        video = Renderer(env.model, 48, 48, RenderOptions.pretty())
        video.render(env.data, "corner")
        print("rendered")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "rendered"
    assert "Traceback" not in out.stderr, out.stderr
    assert "EGLError" not in out.stderr, out.stderr


def test_rendering_env_in_async_vector_env():
    """Workers are spawned, each renders in its own process; images match an in-process env."""
    vec = envs.make_vec(
        "metaworld/reach-v3",
        envs_per_task=2,
        vectorization_mode="async",
        obs=("image/corner",),
        image_size=32,
    )
    local = envs.make("metaworld/reach-v3", obs=("image/corner",), image_size=32)
    try:
        obs, _ = vec.reset(seed=[0, 1])
        expected, _ = local.reset(seed=1)
        assert obs["image/corner"].shape == (2, 32, 32, 3)
        assert obs["image/corner"].dtype == np.uint8
        actions = np.random.default_rng(0).uniform(-1, 1, size=(3, 2, 4)).astype(np.float32)
        for a in actions:
            obs, *_ = vec.step(a)
            expected, *_ = local.step(a[1])
        np.testing.assert_array_equal(obs["image/corner"][1], expected["image/corner"])
        assert not np.array_equal(obs["image/corner"][0], obs["image/corner"][1])
    finally:
        vec.close()
        local.close()
