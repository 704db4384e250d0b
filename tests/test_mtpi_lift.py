"""MT-π's inference from predicted tracks to a command (`il.methods.mtpi.lift`), on tracks
projected from known 3-D motions through the simulator's own cameras."""

from __future__ import annotations

import numpy as np

from envs.camera import CameraModel
from envs.metaworld import load_suite
from il.methods.mtpi.lift import (
    GripperHysteresis,
    clean_outliers,
    ee_target,
    lift_tracks,
    rigid_motion,
)
from robots.rotations import matrix_from_rotvec

GRIPPER = np.array(
    [[0, 0, 0], [0, 0.05, 0], [0, 0.05, 0.045], [0, -0.05, 0], [0, -0.05, 0.045]], float
) + np.array([0.0, 0.6, 0.15])


def along_x(metres: float) -> np.ndarray:
    return np.array([metres, 0.0, 0.0])


def cameras() -> list[CameraModel]:
    suite = load_suite("MT1", "train", "reach-v3", 0)
    env = suite.make("reach-v3")
    env.reset(seed=0)
    sim = env.unwrapped.sim
    return [CameraModel.from_mujoco(sim.model, sim.data, n, 84, 84) for n in ("corner", "corner2")]


def test_kabsch_recovers_a_rigid_motion():
    rng = np.random.default_rng(0)
    R = matrix_from_rotvec(np.array([0.3, -0.2, 0.5]))
    t = np.array([0.05, -0.02, 0.1])
    moved = GRIPPER @ R.T + t + rng.normal(0, 1e-4, GRIPPER.shape)
    R_est, t_est = rigid_motion(GRIPPER, moved)
    np.testing.assert_allclose(R_est, R, atol=5e-3)
    np.testing.assert_allclose(GRIPPER @ R_est.T + t_est, moved, atol=5e-4)
    assert np.isclose(np.linalg.det(R_est), 1.0)


def test_tracks_in_two_views_become_the_end_effectors_target():
    """A gripper sliding 5 mm per step along +x, seen by two cameras: the target is the first
    step from the 4th on that moves the end effector more than 1 cm, and the pixels lift back
    to the path."""
    views = cameras()
    path = np.stack([GRIPPER + along_x(0.005 * (j + 1)) for j in range(16)])  # (16, 5, 3)
    tracks = [c.project(path) for c in views]
    lifted = lift_tracks(views, tracks)
    assert np.abs(lifted - path).max() < 1e-6
    ee = GRIPPER[0]
    position, rotation, j = ee_target(GRIPPER, lifted, ee, np.eye(3))
    assert j == 4  # 5 steps of 5 mm: 2.5 cm, past 1 cm at the first step looked at
    np.testing.assert_allclose(position, ee + along_x(0.025), atol=1e-6)
    np.testing.assert_allclose(rotation, np.eye(3), atol=1e-6)
    slow = np.stack([GRIPPER + along_x(0.001 * (j + 1)) for j in range(16)])
    _, _, j = ee_target(GRIPPER, slow, ee, np.eye(3))
    assert j == 10  # 1 mm per step: the first step past 1 cm is the 11th
    position, _, _ = ee_target(
        GRIPPER, path - np.array([0.0, 0.0, 0.3]), ee, np.eye(3), z_floor=0.05
    )
    assert position[2] == 0.05


def test_a_turn_is_kept_for_a_real_arm_and_dropped_for_a_fixed_one():
    R = matrix_from_rotvec(np.array([0.0, 0.0, 0.4]))
    centre = GRIPPER.mean(axis=0)
    turned = (GRIPPER - centre) @ R.T + centre + along_x(0.02)
    future = np.stack([turned] * 8)
    _, rotation, _ = ee_target(GRIPPER, future, GRIPPER[0], np.eye(3))
    np.testing.assert_allclose(rotation, R, atol=1e-6)
    position, rotation, _ = ee_target(GRIPPER, future, GRIPPER[0], np.eye(3), translation_only=True)
    np.testing.assert_allclose(rotation, np.eye(3))
    np.testing.assert_allclose(position, GRIPPER[0] + along_x(0.02), atol=1e-9)


def test_a_thrown_point_is_put_back_between_its_neighbours():
    current = np.zeros((5, 2))
    track = np.stack([np.full((5, 2), float(j + 1)) for j in range(6)])  # 1 px per step
    track[2, 3] = [500.0, -400.0]  # one point thrown across the image
    track[5, 1] = [np.nan, 3.0]
    clean = clean_outliers(track, current, max_px=100)
    np.testing.assert_allclose(clean[2, 3], [3.0, 3.0])  # between steps 1 and 3 of that point
    np.testing.assert_allclose(clean[5, 1], [5.0, 5.0])  # the last valid value, held
    np.testing.assert_array_equal(np.delete(clean, [2, 5], axis=0), np.delete(track, [2, 5], 0))


def test_the_gripper_closes_on_agreement_and_opens_on_agreement():
    gripper = GripperHysteresis()
    said = [
        (True, False),
        (True, True),
        (True, False),
        (False, True),
        (False, False),
        (True, False),
    ]
    assert [gripper(g) for g in said] == [False, True, True, True, False, False]
