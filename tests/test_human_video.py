"""`il record --human-video`: a clip of two calibrated views and hand keypoints becomes a human
episode with motion tracks. The clip is rendered here: a Meta-World scene filmed by two of its
cameras at a non-square size, the "hand" keypoints being the gripper's, so the stored tracks
can be checked against the 3-D points they came from."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from envs.camera import CameraModel, triangulate
from envs.metaworld import gripper_keypoints, load_suite
from envs.tracks import TRACKS_ATTR, cameras_from_attrs
from il.data.store import DemoStore

IL = [sys.executable, "-m", "il.cli"]
W, H, T = 96, 72, 12


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 12-frame clip of drawer-close in two views, its calibration, the keypoints as 21
    MediaPipe-ordered landmarks, and the true 3-D points."""
    folder = tmp_path_factory.mktemp("clips") / "clip0"
    suite = load_suite("MT1", "train", "drawer-close-v3", 0)
    env = suite.make("drawer-close-v3")
    obs, _ = env.reset(seed=0)
    sim = env.unwrapped.sim
    from envs.rendering import Renderer

    renderer = Renderer(sim.model, W, H)
    names = ("corner", "corner2")
    cameras = [CameraModel.from_mujoco(sim.model, sim.data, n, W, H) for n in names]
    truth, landmarks = [], {n: [] for n in names}
    expert = envs_expert(suite)
    for t in range(T):
        points = gripper_keypoints(sim)
        truth.append(points)
        for camera in cameras:
            (folder / camera.name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(renderer.render(sim.data, camera.name)).save(
                folder / camera.name / f"{t:06d}.png"
            )
            hand = np.full((21, 2), 7.0)  # landmarks the tracks do not use
            hand[[5, 4, 3, 8, 7]] = camera.project(points)  # a right hand: thumb on the left
            landmarks[camera.name].append(hand)
        action, _ = expert.act(obs)
        obs, *_ = env.step(action)
    renderer.close()
    calibration = {
        "fps": 80,
        "cameras": {
            c.name: {"width": W, "height": H, "K": c.K.tolist(), "R": c.R.tolist(),
                     "t": c.t.tolist()}
            for c in cameras
        },
    }  # fmt: skip
    (folder / "calibration.yaml").write_text(yaml.safe_dump(calibration))
    np.savez(folder / "keypoints.npz", **{n: np.stack(v) for n, v in landmarks.items()})
    return folder, np.stack(truth)


def envs_expert(suite):
    import envs

    return envs.family_of("metaworld").expert(suite.tasks[0])


def record(clip_path, out, *extra):
    return subprocess.run(
        [*IL, "record", "--human-video", str(clip_path), "--tasks", "drawer-close-v3",
         "--out", str(out), *extra],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_a_clip_becomes_a_human_episode_whose_tracks_lift_to_the_hand(clip, tmp_path):
    folder, truth = clip
    out = tmp_path / "human.zarr"
    run = record(folder, out)
    assert run.returncode == 0, run.stderr
    assert "recorded 1 clips" in run.stdout
    store = DemoStore.open(out)
    assert list(store.episode_meta()["source"]) == ["human"] and store.schema.fps == 80
    episode = store.read_episode(0)
    assert episode["obs/image/corner"].shape == (T, 84, 84, 3)  # centre-cropped, resized
    cameras = cameras_from_attrs(store.schema.source[TRACKS_ATTR])
    assert all(c.width == c.height == 84 for c in cameras)
    lifted = triangulate(cameras, [episode[f"track/{c.name}"] for c in cameras])
    assert 1000 * np.abs(lifted - truth).max() < 1.0  # the crop moved pixels and models alike
    # the fingertips are 10 cm apart: no pinch
    assert not episode["track/grasp"].any() and episode["success"][-1]
    again = record(folder, out)
    assert "recorded 0 clips into" in again.stdout and "(1 already there)" in again.stdout


def test_a_grasp_given_with_the_keypoints_is_kept_and_bad_clips_are_one_line(clip, tmp_path):
    folder, _ = clip
    import shutil

    given = tmp_path / "given"
    shutil.copytree(folder, given)
    keypoints = dict(np.load(given / "keypoints.npz"))
    grasp = np.arange(T) >= 6
    np.savez(given / "keypoints.npz", **keypoints, grasp=grasp)
    assert record(given, tmp_path / "g.zarr").returncode == 0
    stored = DemoStore.open(tmp_path / "g.zarr").read_episode(0)["track/grasp"]
    np.testing.assert_array_equal(stored, grasp)
    np.savez(given / "keypoints.npz", **{k: v[:-1] for k, v in keypoints.items()})
    for path, extra, message in [
        (given, [], "differ in length"),
        (tmp_path / "nothing", [], "no clip folder"),
        (folder, ["--tasks", "a,b"], "needs the task the clips show"),
    ]:
        run = record(path, tmp_path / "bad.zarr", *extra)
        assert run.returncode != 0 and message in run.stderr, run.stderr
        assert "Traceback" not in run.stderr
