"""Camera models against the simulator itself: projection, triangulation and rendered pixels.

Motion-track policies predict where the gripper appears in each image and lift those pixels back
to 3-D, so the camera model must agree with MuJoCo to well under a millimetre and with what the
renderer draws to within a pixel. Everything here runs real MuJoCo, no mocks.
"""

from __future__ import annotations

import math

import mujoco
import numpy as np
import pytest

import envs
from envs import CameraModel, MetaWorldEnv, triangulate

TASKS = ("pick-place-v3", "drawer-open-v3")
CORNERS = ("corner", "corner2", "corner3")
GEOM = int(mujoco.mjtObj.mjOBJ_GEOM)


def gripper_bodies(model: mujoco.MjModel) -> np.ndarray:
    """Mask over bodies: `hand` and every body below it (claws and finger pads)."""
    hand = model.body("hand").id
    mask = np.zeros(model.nbody, dtype=bool)
    for body in range(model.nbody):
        b = body
        while b != 0 and b != hand:
            b = model.body_parentid[b]
        mask[body] = b == hand
    return mask


def gripper_points(env: MetaWorldEnv) -> np.ndarray:
    """(4, 3) ground-truth gripper points: tool centre, the two finger pads, the hand body."""
    data = env.data
    return np.stack(
        [
            np.asarray(env.sim.tcp_center),
            data.body("leftpad").xpos,
            data.body("rightpad").xpos,
            data.body("hand").xpos,
        ]
    )


def rollout_states(env: MetaWorldEnv, steps: int = 40, every: int = 8, seed: int = 0):
    """Yield along a short random rollout (small actions keep the gripper above the table)."""
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    for step in range(steps):
        env.step(rng.uniform(-1.0, 1.0, size=4))
        if step % every == 0:
            yield step


@pytest.fixture(scope="module", params=TASKS)
def env(request):
    env = envs.make(f"metaworld/{request.param}", obs=("state",), image_size=84)
    yield env
    env.close()


# --- projection and triangulation --------------------------------------------------------------
@pytest.mark.parametrize("cameras", [CORNERS[:2], CORNERS])
def test_project_then_triangulate_round_trips(env, cameras):
    worst_exact = worst_rounded = 0.0
    for _ in rollout_states(env):
        points = gripper_points(env)
        models = [env.camera_model(c) for c in cameras]
        pixels = [m.project(points) for m in models]
        for m, px in zip(models, pixels, strict=True):
            assert np.all(m.depth(points) > 0), f"{m.name}: gripper behind the camera"
            assert np.all((px > -0.5) & (px < 83.5)), f"{m.name}: gripper outside the image"
        exact = triangulate(models, pixels)
        rounded = triangulate(models, [np.round(px, 2) for px in pixels])
        worst_exact = max(worst_exact, float(np.abs(exact - points).max()))
        worst_rounded = max(worst_rounded, float(np.linalg.norm(rounded - points, axis=-1).max()))
    assert worst_exact < 1e-6
    assert worst_rounded < 1e-3


def test_triangulate_is_batched(env):
    env.reset(seed=0)
    models = [env.camera_model(c) for c in CORNERS[:2]]
    points = gripper_points(env) + np.zeros((5, 1, 1))  # (5, 4, 3)
    out = triangulate(models, [m.project(points) for m in models])
    assert out.shape == (5, 4, 3)
    np.testing.assert_allclose(out, points, atol=1e-6)


@pytest.mark.parametrize(
    ("n_cameras", "n_pixels"), [(0, 0), (1, 1), (2, 1), (3, 2)], ids=["none", "one", "2v1", "3v2"]
)
def test_triangulate_errors_are_one_line(env, n_cameras, n_pixels):
    model = env.camera_model("corner")
    with pytest.raises(ValueError) as err:
        triangulate([model] * n_cameras, [np.zeros(2)] * n_pixels)
    text = str(err.value)
    assert "\n" not in text and ">= 2" in text


# --- intrinsics --------------------------------------------------------------------------------
@pytest.mark.parametrize("camera", ["corner", "corner2", "topview"])
def test_focal_length_comes_from_fovy(env, camera):
    model = env.model
    fovy = math.radians(float(model.cam_fovy[model.camera(camera).id]))
    for w, h in ((84, 84), (160, 120)):
        K = env.camera_model(camera, size=(w, h)).K
        focal = (h / 2) / math.tan(fovy / 2)
        # Square pixels: MuJoCo keeps the vertical field of view and widens the horizontal one.
        np.testing.assert_allclose([K[0, 0], K[1, 1]], [focal, focal])
        np.testing.assert_allclose([K[0, 2], K[1, 2]], [(w - 1) / 2, (h - 1) / 2])
        np.testing.assert_allclose(K[2], [0, 0, 1])
        assert K[0, 1] == K[1, 0] == 0


@pytest.mark.parametrize("size", [(168, 168), (64, 64), (200, 150)])
def test_scaled_matches_from_mujoco_at_that_size(env, size):
    env.reset(seed=0)
    base = env.camera_model("corner", size=(size[0] * 84 // size[1], 84))
    direct = env.camera_model("corner", size=size)
    scaled = base.scaled(*size)
    np.testing.assert_allclose(scaled.K, direct.K, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(scaled.R, direct.R)
    np.testing.assert_allclose(scaled.t, direct.t)
    points = gripper_points(env)
    np.testing.assert_allclose(scaled.project(points), direct.project(points), atol=1e-9)


def test_scaled_is_image_resize(env):
    """With pixel centres at integers, resizing by s maps u to (u + 0.5) s - 0.5."""
    env.reset(seed=0)
    model = env.camera_model("corner2")
    points = gripper_points(env)
    resized = model.scaled(126, 42)
    expected = (model.project(points) + 0.5) * np.array([126 / 84, 42 / 84]) - 0.5
    np.testing.assert_allclose(resized.project(points), expected, atol=1e-9)


def test_camera_model_matches_mujoco_pose(env):
    env.reset(seed=0)
    model, data = env.model, env.data
    for name in CORNERS:
        cam = CameraModel.from_mujoco(model, data, name, 84, 84)
        cam_id = model.camera(name).id
        np.testing.assert_allclose(cam.position, data.cam_xpos[cam_id], atol=1e-12)
        np.testing.assert_allclose(cam.R @ cam.R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(cam.R) == pytest.approx(1.0)
        # OpenCV's z (forward) is MuJoCo's -z.
        np.testing.assert_allclose(cam.R[2], -data.cam_xmat[cam_id].reshape(3, 3)[:, 2])


@pytest.mark.parametrize("size", [(84, 84), (168, 126)])
def test_depth_buffer_unprojects_onto_the_floor(env, size):
    """Sub-pixel check of K, R and t together: every pixel showing the floor, lifted to 3-D with
    the rendered depth, lies on the floor plane. Half a pixel off in the principal point (pixel
    corners instead of centres) already puts points centimetres off the plane."""
    env.reset(seed=0)
    model, data = env.model, env.data
    floor_z = float(data.geom("floor").xpos[2])
    w, h = size
    renderer = mujoco.Renderer(model, h, w)
    try:
        for camera in CORNERS:
            renderer.update_scene(data, camera=camera)
            renderer.enable_depth_rendering()
            depth = renderer.render().astype(np.float64)
            renderer.disable_depth_rendering()
            renderer.enable_segmentation_rendering()
            seg = renderer.render()
            renderer.disable_segmentation_rendering()
            floor = (seg[..., 1] == GEOM) & (seg[..., 0] == model.geom("floor").id)
            assert floor.sum() > 20, camera
            cam = env.camera_model(camera, size=size)
            v, u = np.nonzero(floor)
            rays = np.stack([u, v, np.ones_like(u)], axis=-1) @ np.linalg.inv(cam.K).T
            points = (rays * depth[v, u][:, None] - cam.t) @ cam.R  # R^T (x_cam - t)
            np.testing.assert_allclose(points[:, 2], floor_z, atol=1e-4, err_msg=camera)
    finally:
        renderer.close()


# --- the projection lands on the rendered gripper ----------------------------------------------
def _gripper_mask(seg: np.ndarray, model: mujoco.MjModel, bodies: np.ndarray) -> np.ndarray:
    ids = np.maximum(seg[..., 0], 0)
    return (seg[..., 1] == GEOM) & (seg[..., 0] >= 0) & bodies[model.geom_bodyid[ids]]


@pytest.mark.parametrize("size", [(128, 128), (160, 120)])
def test_projected_gripper_lands_on_rendered_gripper(size):
    """Project the finger pads and the hand's geom; the rounded pixel (±1) must show a geom of
    the gripper in a segmentation render.

    At 128 px and up the 6 mm thin pads are at least a pixel wide from every corner camera; at
    84 px they are sometimes rasterised a pixel and a half away from their centre. The hand's
    own geom (the rail) sits inside the wrist mesh, and from the top view the arm hides the
    whole gripper, so those checks hide the arm links (geom group 5 is not drawn); the pads are
    also checked in the full scene.
    """
    env = envs.make("metaworld/pick-place-v3", obs=("state",), image_size=size)
    try:
        model, data = env.model, env.data
        bodies = gripper_bodies(model)
        geoms = [
            g
            for g in range(model.ngeom)
            if bodies[model.geom_bodyid[g]] and model.geom_group[g] < 3 and model.geom_rgba[g, 3]
        ]
        pads = [model.geom("leftpad_geom").id, model.geom("rightpad_geom").id]
        assert set(pads) < set(geoms) and model.geom("rail").id in geoms
        arm = []
        b = model.body_parentid[model.body("hand").id]
        while b != 0:
            arm.append(b)
            b = model.body_parentid[b]
        arm_geoms = np.flatnonzero(np.isin(model.geom_bodyid, arm))
        checks = [
            ("corner", False, pads),
            ("corner2", False, pads),
            ("corner", True, geoms),
            ("corner2", True, geoms),
            ("topview", True, geoms),
        ]
        misses = []
        for step in rollout_states(env, steps=36, every=12):
            for camera, hide_arm, checked in checks:
                saved = model.geom_group[arm_geoms].copy()
                if hide_arm:
                    model.geom_group[arm_geoms] = 5
                try:
                    seg = env.segmentation(camera)
                finally:
                    model.geom_group[arm_geoms] = saved
                assert seg.shape == (size[1], size[0], 2) and seg.dtype == np.int32
                mask = _gripper_mask(seg, model, bodies)
                # The gripper is small, so a hit by chance is unlikely.
                assert 0 < mask.mean() < 0.05, (camera, mask.mean())
                cam = env.camera_model(camera)
                for g in checked:
                    u, v = np.rint(cam.project(data.geom_xpos[g])).astype(int)
                    window = mask[max(v - 1, 0) : v + 2, max(u - 1, 0) : u + 2]
                    if not window.any():
                        misses.append((step, camera, hide_arm, model.geom(g).name, (u, v)))
        assert not misses
    finally:
        env.close()


# --- upright images and determinism ------------------------------------------------------------
def test_corner_cameras_are_upright(env):
    env.reset(seed=0)
    model, data = env.model, env.data
    for name in ("corner", "corner2", "corner3", "corner4"):
        cam_id = model.camera(name).id
        up = data.cam_xmat[cam_id].reshape(3, 3)[:, 1]
        assert up[2] > 0, f"{name}: image 'up' points down in the world: {up}"
        # The image's v axis (down) points down in the world.
        assert env.camera_model(name).R[1, 2] < 0
    # And in pixels: the table (geoms) fills the bottom row, the empty background sits on top.
    seg = env.segmentation("corner")
    background = seg[..., 0] == -1
    assert background[:10].mean() > 0.5 and background[-10:].mean() == 0


def test_images_are_deterministic_across_fresh_envs():
    actions = np.random.default_rng(1).uniform(-1, 1, size=(8, 4))

    def frames() -> list[np.ndarray]:
        env = envs.make("metaworld/pick-place-v3", obs=("image/corner", "image/corner2"))
        try:
            obs, _ = env.reset(seed=4)
            out = [obs["image/corner"], obs["image/corner2"]]
            for a in actions:
                obs, *_ = env.step(a)
                out += [obs["image/corner"], obs["image/corner2"]]
            return out
        finally:
            env.close()

    first, second = frames(), frames()
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert not np.array_equal(first[0], first[-2])  # the arm moved


# --- the added workspace camera ------------------------------------------------------------------
def test_workspace_camera_leaves_physics_alone():
    """The scene compiled with the extra camera steps exactly like Meta-World's own."""
    import metaworld

    name = "pick-place-v3"
    ours = envs.make(f"metaworld/{name}", obs=("state", "image/workspace"))
    plain = metaworld.env_dict.ALL_V3_ENVIRONMENTS[name]()
    try:
        variation = ours.unwrapped.variations[3]
        ours.reset(options={"variation": 3})
        plain.set_task(variation)
        expected, _ = plain.reset()
        actions = np.random.default_rng(0).uniform(-1, 1, size=(60, 4))
        got = [ours.unwrapped.sim._get_obs()]
        want = [expected]
        for a in actions:
            got.append(ours.step(a)[0]["state"])
            want.append(plain.step(a)[0])
        np.testing.assert_array_equal(
            np.asarray(got[1:], np.float32), np.asarray(want[1:], np.float32)
        )
        assert ours.unwrapped.model.ncam == plain.model.ncam + 2
    finally:
        ours.close()
        plain.close()


@pytest.mark.parametrize("task", ["reach-v3", "push-v3", "pick-place-v3"])
def test_workspace_camera_frames_goals_larger_than_corner(task):
    """Every goal of the task is in view and drawn at least twice as large as from `corner`:
    the reason the camera exists."""
    env = envs.make(f"metaworld/{task}", obs=("state",), image_size=84)
    try:
        for seed in range(0, 50, 7):
            env.reset(seed=seed)
            goal = np.asarray(env.unwrapped.sim._target_pos, dtype=float)
            sizes = {}
            for name in ("workspace", "corner"):
                cam = env.unwrapped.camera_model(name)
                u, v = cam.project(goal)
                assert 0 <= u < 84 and 0 <= v < 84, f"{task} seed {seed}: goal off {name}'s image"
                sizes[name] = cam.K[0, 0] / cam.depth(goal)  # pixels per metre at the goal
            assert sizes["workspace"] > 2 * sizes["corner"], sizes
        cam = env.unwrapped.camera_model("workspace")
        assert cam.R[1, 2] < 0  # upright: the image's v axis points down in the world
    finally:
        env.close()


@pytest.mark.parametrize("task", ["reach-v3", "pick-place-v3"])
def test_side_camera_sees_a_floating_goals_height(task):
    """From `side` every goal of the task is in view and a higher goal is higher in the image,
    and the camera looks nearly level, so height is not confused with depth as from above."""
    env = envs.make(f"metaworld/{task}", obs=("state",), image_size=84)
    try:
        cam = env.unwrapped.camera_model("side")
        assert cam.R[1, 2] < 0  # upright
        assert abs(cam.R[2, 2]) < 0.3  # optical axis within ~17 degrees of horizontal
        for seed in range(0, 50, 5):
            env.reset(seed=seed)
            goal = np.asarray(env.unwrapped.sim._target_pos, dtype=float)
            u, v = cam.project(goal)
            assert 0 <= u < 84 and 0 <= v < 84, f"{task} seed {seed}: goal off side's image"
        base = goal  # the last variation's
        for z in (0.05, 0.15, 0.3):  # the same goal raised: rows go up the image
            assert (
                cam.project(base * [1, 1, 0] + [0, 0, z])[1]
                > cam.project(base * [1, 1, 0] + [0, 0, z + 0.05])[1]
            )
    finally:
        env.close()


@pytest.mark.parametrize(
    ("task", "site"), [("reach-v3", "goal"), ("coffee-push-v3", "coffee_goal")]
)
def test_red_goal_markers_are_drawn_magenta(task, site):
    """A goal marker Meta-World draws in the arm's red is drawn magenta, and the pixel where the
    goal projects shows it; goals in other colours keep theirs."""
    from envs.metaworld import GOAL_MARKER_RGBA

    env = envs.make(f"metaworld/{task}", obs=("image/workspace",), image_size=84)
    try:
        model = env.unwrapped.model
        np.testing.assert_allclose(model.site(site).rgba, GOAL_MARKER_RGBA)
        for seed in (0, 1, 2):
            obs, _ = env.reset(seed=seed)
            goal = env.unwrapped.data.site(site).xpos
            u, v = env.unwrapped.camera_model("workspace").project(goal)
            r, g, b = obs["image/workspace"][int(v), int(u)].astype(int)
            assert r > 2 * g and b > 2 * g, (task, seed, (r, g, b))
    finally:
        env.close()
    push = envs.make("metaworld/push-v3", obs=("state",))
    try:
        np.testing.assert_allclose(push.unwrapped.model.site("goal").rgba, (0, 0.8, 0, 1))
    finally:
        push.close()
