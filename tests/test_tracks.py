"""Motion tracks in expert recordings (`envs.tracks`): the gripper's five points in two
calibrated views and a grasp bit, stored so that lifting them back to 3-D needs nothing but the
store."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from envs.camera import triangulate
from envs.metaworld import gripper_keypoints, load_suite
from envs.tracks import GRASP_KEY, KEYPOINTS, TRACKS_ATTR, cameras_from_attrs, track_key
from il.data.store import DemoStore
from il.data.tracks import track_statistics
from il.record import record_expert

IL = [sys.executable, "-m", "il.cli"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    suite = load_suite("MT1", "train", "pick-place-v3", 0)
    path = str(tmp_path_factory.mktemp("tracks") / "pick.zarr")
    record_expert(suite, path, episodes_per_task=1, workers=1)
    return suite, path


def test_tracks_lift_back_to_the_gripper_within_a_millimetre(recorded):
    """Stored pixels + stored camera models → the gripper's points, checked against the
    simulator's own at every step (its state restored from the store)."""
    suite, path = recorded
    store = DemoStore.open(path)
    cameras = cameras_from_attrs(store.schema.source[TRACKS_ATTR])
    assert [c.name for c in cameras] == ["corner", "corner2"]
    assert store.schema.source[TRACKS_ATTR]["keypoints"] == list(KEYPOINTS)
    episode = store.read_episode(0)
    pixels = [episode[track_key(c.name)] for c in cameras]
    assert pixels[0].shape == (len(episode["action"]), 5, 2) and pixels[0].dtype == np.float32
    lifted = triangulate(cameras, pixels)
    env = suite.make("pick-place-v3")
    env.reset(seed=int(store.episode_meta()["seed"][0]))
    truth = []
    for state in episode["sim_state"]:
        env.unwrapped.set_sim_state(state)
        truth.append(gripper_keypoints(env.unwrapped.sim))
    error_mm = 1000 * np.linalg.norm(lifted - np.stack(truth), axis=-1)
    assert error_mm.max() < 1.0, error_mm.max()
    # the points are where a gripper is: fingertips ~10 cm apart when open, pads above the tips
    first = np.stack(truth)[0]
    assert 0.05 < np.linalg.norm(first[1] - first[3]) < 0.15
    assert first[2][2] > first[1][2] and first[4][2] > first[3][2]


def test_the_grasp_bit_is_the_last_gripper_command(recorded):
    _, path = recorded
    episode = DemoStore.open(path).read_episode(0)
    grasp, action = episode[GRASP_KEY], episode["action"]
    assert not grasp[0]  # nothing commanded before the first step
    np.testing.assert_array_equal(grasp[1:], action[:-1, 3] > 0)
    assert grasp.any() and not grasp.all()  # pick-place closes on the object, then holds it


def test_info_reports_the_views_and_their_agreement(recorded):
    _, path = recorded
    stats = track_statistics(DemoStore.open(path))
    assert stats["cameras"]["corner"]["inside"] == 1.0
    assert stats["reprojection_px"]["p99"] < 0.01
    out = subprocess.run([*IL, "info", path], capture_output=True, text=True, check=True).stdout
    assert "motion tracks: corner 84x84" in out and "views agree" in out


def test_resuming_keeps_the_stores_tracks_and_bad_requests_are_one_line(recorded, tmp_path):
    suite, _ = recorded
    old = str(tmp_path / "old.zarr")
    record_expert(suite, old, episodes_per_task=1, workers=1, track_cameras=())
    record_expert(suite, old, episodes_per_task=2, workers=1)  # a store without tracks resumes
    store = DemoStore.open(old)
    assert store.num_episodes == 2 and not any(k.startswith("track/") for k in store.schema.keys)
    assert track_statistics(store) is None
    other = str(tmp_path / "other.zarr")
    record_expert(suite, other, episodes_per_task=1, workers=1, track_cameras=("side", "workspace"))
    record_expert(suite, other, episodes_per_task=2, workers=1)
    assert {"track/side", "track/workspace"} <= set(DemoStore.open(other).schema.keys)
    for args, message in [
        (["--tracks", "corner"], "--tracks takes two cameras"),
        (["--tracks", "corner,nowhere"], "unknown Meta-World camera 'nowhere'"),
        (["--env", "maze/tunnel16/3", "--tracks", "a,b"], "no gripper to record motion tracks"),
        (["--env", "maze/tunnel16/3", "--source", "human-proxy"], "no gripper for a human-proxy"),
        (["--source", "human-proxy", "--tracks", "none"], "two cameras' views: give --tracks"),
    ]:
        env = [] if "--env" in args else ["--env", "metaworld/reach-v3"]
        run = subprocess.run(
            [*IL, "record", *env, *args, "--episodes-per-task", "1", "--out", str(tmp_path / "x")],
            capture_output=True,
            text=True,
        )
        assert run.returncode != 0 and message in run.stderr, run.stderr
        assert "Traceback" not in run.stderr


# --- robot sessions ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(store_path, tmp_path_factory) -> str:
    from conftest import config_for

    from il.train import train

    out = tmp_path_factory.mktemp("tracks-deploy") / "run"
    train(config_for(store_path, out, "train.steps=20"))
    return str(out)


def test_a_deploy_session_on_the_simulated_arm_records_tracks(checkpoint, tmp_path):
    """Two scene cameras (whose pose the simulator knows) and the arm's own gripper points:
    the session stores their tracks, which lift back onto the points the arm reported."""
    out = str(tmp_path / "deploy.zarr")
    subprocess.run(
        [*IL, "deploy", "--checkpoint", checkpoint, "--robot", "sim:metaworld/reach-v3",
         "--camera", "corner", "--camera", "corner2", "--hz", "80", "--record", out,
         "--episodes", "1", "--max-episode-steps", "30"],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    store = DemoStore.open(out)
    cameras = cameras_from_attrs(store.schema.source[TRACKS_ATTR])
    assert [c.name for c in cameras] == ["corner", "corner2"]
    episode = store.read_episode(0)
    lifted = triangulate(cameras, [episode[track_key(c.name)] for c in cameras])
    error_mm = 1000 * np.linalg.norm(lifted - episode["obs/gripper_points"], axis=-1)
    assert error_mm.max() < 1.0, error_mm.max()
    grasp = episode[GRASP_KEY]
    assert not grasp[0]
    np.testing.assert_array_equal(grasp[1:], episode["action"][:-1, 3] > 0)
    info = subprocess.run([*IL, "info", out], capture_output=True, text=True, check=True).stdout
    assert "motion tracks: corner 84x84" in info


def test_a_gripper_model_places_the_points_of_an_arm_that_reports_its_tool_pose():
    """A real arm reports only its tool pose: the points come from the gripper's size, turned
    with the tool, closing in as the gripper closes."""
    from robots.gripper import GripperGeometry
    from robots.rotations import matrix_from_rotvec

    geometry = GripperGeometry()
    at = np.array([0.4, -0.1, 0.3])
    upright = geometry.points(at, np.zeros(3), closed=0.0)
    np.testing.assert_allclose(upright[0], at)
    np.testing.assert_allclose(upright[1] - upright[3], [0, 0.1, 0])  # 5 cm either side, open
    np.testing.assert_allclose(upright[2] - upright[1], [0, 0, -0.075])  # up the finger
    closed = geometry.points(at, np.zeros(3), closed=1.0)
    np.testing.assert_allclose(closed[1] - closed[3], [0, 0.05, 0])
    turn = np.array([np.pi, 0.0, 0.0])  # tool pointing down, as on a table-top arm
    down = geometry.points(at, turn, closed=0.0)
    np.testing.assert_allclose(down - at, (upright - at) @ matrix_from_rotvec(turn).T, atol=1e-12)
    assert down[2][2] > down[1][2]  # pointing down, the finger's upper point is above its tip
    with pytest.raises(ValueError, match="unknown key 'width'"):
        GripperGeometry.from_options({"width": 0.1})
    with pytest.raises(ValueError, match="closed_half_width must not be above"):
        GripperGeometry.from_options({"closed_half_width": 0.2})


def test_camera_poses_from_a_setup_are_checked(tmp_path):
    from robots.sim import SimArm

    arm = SimArm("metaworld/reach-v3")
    with arm:
        camera = arm.camera("corner")
        exact_R, exact_t = camera.extrinsics
        camera.set_extrinsics(exact_R, exact_t + 0.01)  # a calibration, slightly off
        np.testing.assert_allclose(camera.extrinsics[1], exact_t + 0.01)
        with pytest.raises(ValueError, match="is not a rotation"):
            camera.set_extrinsics(2 * np.eye(3), np.zeros(3))
        with pytest.raises(ValueError, match="R as 3x3 and t as 3 numbers"):
            camera.set_extrinsics(np.eye(3), np.zeros(2))


def test_a_store_recorded_before_gripper_points_and_tracks_takes_more_episodes(
    checkpoint, tmp_path
):
    """A session store from before the gripper's points and tracks were recorded: a new
    session resumes into it with the keys it has."""
    from il.data.store import StoreSchema
    from il.session import robot_schema
    from robots.safety import SafeRobot, SafetyConfig
    from robots.sim import SIM_SAFETY, SimArm

    arm = SimArm("metaworld/reach-v3")
    safe = SafeRobot(arm, SafetyConfig.from_dict(SIM_SAFETY))
    with safe:
        cameras = [arm.camera(name) for name in ("corner", "corner2")]
        new = robot_schema(safe, cameras, {"corner": (84, 84), "corner2": (84, 84)}, 80)
    assert {"obs/gripper_points", "track/corner", "track/grasp"} <= set(new.keys)
    keys = {
        k: v
        for k, v in new.keys.items()
        if k != "obs/gripper_points" and not k.startswith("track/")
    }
    source = {k: v for k, v in new.source.items() if k != TRACKS_ATTR}
    out = str(tmp_path / "old.zarr")
    DemoStore.create(out, StoreSchema(keys, new.fps, new.action, source)).close()
    subprocess.run(
        [*IL, "deploy", "--checkpoint", checkpoint, "--robot", "sim:metaworld/reach-v3",
         "--camera", "corner", "--camera", "corner2", "--hz", "80", "--record", out,
         "--episodes", "1", "--max-episode-steps", "5"],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    store = DemoStore.open(out)
    assert store.num_episodes == 1
    assert "obs/gripper_points" not in store.schema.keys
    assert not any(k.startswith("track/") for k in store.schema.keys)


# --- human-proxy demonstrations ------------------------------------------------------------------
def test_a_human_proxy_recording_holds_what_a_video_of_a_hand_would(recorded, tmp_path):
    """Two views with the scene recoloured, keypoints where a hand tracker would put them,
    grasp bits read from the images; nothing of the robot (METHODS §1b)."""
    suite, expert_path = recorded
    path = str(tmp_path / "proxy.zarr")
    subprocess.run(
        [*IL, "record", "--source", "human-proxy", "--env", "metaworld/pick-place-v3",
         "--episodes-per-task", "1", "--workers", "1", "--out", path],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    proxy, expert = DemoStore.open(path), DemoStore.open(expert_path)
    assert set(proxy.schema.keys) == {
        "obs/image/corner", "obs/image/corner2", "track/corner", "track/corner2",
        "track/grasp", "success",
    }  # fmt: skip
    assert list(proxy.episode_meta()["source"]) == ["human"]
    assert proxy.schema.source["human_proxy"]["noise_px"] == 1.0
    ours, theirs = proxy.read_episode(0), expert.read_episode(0)  # the same episode (seed 0)
    assert len(ours["success"]) == len(theirs["action"])
    # keypoints: a hand's, not the gripper's — off by the distortion and the noise, not more
    off = np.linalg.norm(ours["track/corner"] - theirs["track/corner"], axis=-1)
    assert 0.3 < off.mean() < 5.0, off.mean()
    # the grasp comes from the images: close to the gripper's own, never a copy of it
    grasp, truth = ours["track/grasp"], theirs["track/grasp"]
    assert grasp.any() and (grasp == truth).mean() > 0.7 and not np.array_equal(grasp, truth)
    # and it looks like another scene: the table is recoloured
    assert np.abs(ours["obs/image/corner"][0].astype(int) - _expert_view(suite, 0)).mean() > 5


def _expert_view(suite, seed: int) -> np.ndarray:
    env = suite.make("pick-place-v3", obs=("image/corner",))
    obs, _ = env.reset(seed=seed)
    return obs["image/corner"].astype(int)


def test_distortion_and_grasp_heuristic():
    from envs.human_proxy import HumanProxy, distort_keypoints, grasp_from_masks

    gripper = np.array(
        [[0, 0, 0], [0, 0.05, 0], [0, 0.05, 0.045], [0, -0.05, 0], [0, -0.05, 0.045]], float
    )
    hand = distort_keypoints(gripper, HumanProxy(spread=1.5, base_offset=0.02))
    np.testing.assert_allclose(hand[1] - hand[3], [0, 0.15, 0])  # wider, by the spread
    np.testing.assert_allclose(hand[2] - hand[1], gripper[2] - gripper[1])  # finger length kept
    np.testing.assert_allclose(hand[0], [0, 0, 0.02])  # the base moved up the fingers
    masks = np.zeros((8, 10, 10), bool)
    masks[:, 4:6, 4:6] = True
    near, far = [[4, 3], [6, 3]], [[0, 9], [9, 9]]  # fingertips (u, v): touching, or not
    tips = np.array([far, near, near, near, far, near, near, near], float)
    np.testing.assert_array_equal(
        grasp_from_masks(tips, masks, radius_px=1.5, frames=3),
        [False, False, False, True, False, False, False, True],
    )
    with pytest.raises(ValueError, match="grasp_frames must be a whole number"):
        HumanProxy(grasp_frames=0)
