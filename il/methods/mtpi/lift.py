"""From predicted motion tracks to a command (MT-π's inference, METHODS §1a): the 2-D tracks of
two calibrated views become 3-D keypoint paths, a rigid motion of the gripper, a target pose for
the end effector, and a gripper command that does not flicker.

Steps, each a function here so a deployment can log or replace any of them:

1. `clean_outliers`: a predicted point that jumps more than `max_px` from where the point is
   now is replaced by interpolating its valid neighbours in time (a view's diffusion sample
   sometimes throws one point across the image; triangulating it would throw the gripper).
2. `lift_tracks`: each future step's five point pairs triangulated by linear DLT.
3. `rigid_motion` (Kabsch): the rotation and translation taking the keypoints now onto those of
   a future step.
4. `ee_target`: that motion applied to the end effector's pose, taking the first future step
   from `first_step` on whose motion moves the end effector more than `min_move` (a receding
   horizon that looks far enough ahead to move, not so far that it cuts corners), the height
   kept above `z_floor`. `translation_only` drops the rotation, for an arm whose orientation is
   fixed (Meta-World's); a real arm keeps the full rotation.
5. `GripperHysteresis`: close only when both views say grasp, and once closed stay closed while
   either does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from envs.camera import CameraModel, triangulate

__all__ = ["GripperHysteresis", "clean_outliers", "ee_target", "lift_tracks", "rigid_motion"]


def clean_outliers(track: np.ndarray, current: np.ndarray, max_px: float = 100.0) -> np.ndarray:
    """`track` (H, K, 2) of one view with every point that lies more than `max_px` from its
    current position (`current`, (K, 2)) replaced by linear interpolation, in time, between the
    nearest valid steps of the same point (the current position counts as step -1)."""
    track = np.asarray(track, dtype=np.float64).copy()
    current = np.asarray(current, dtype=np.float64)
    H, K, _ = track.shape
    bad = np.linalg.norm(track - current[None], axis=-1) > max_px
    bad |= ~np.isfinite(track).all(axis=-1)
    times = np.arange(-1, H)
    for k in range(K):
        if not bad[:, k].any():
            continue
        path = np.concatenate([current[None, k], track[:, k]])
        valid = np.concatenate([[True], ~bad[:, k]])
        for axis in range(2):
            path[~valid, axis] = np.interp(times[~valid], times[valid], path[valid, axis])
        track[:, k] = path[1:]
    return track


def lift_tracks(cameras: Sequence[CameraModel], tracks: Sequence[np.ndarray]) -> np.ndarray:
    """The 3-D paths (H, K, 3) of the points tracked in each view (`tracks[i]`: (H, K, 2) in
    `cameras[i]`), by DLT."""
    return triangulate(cameras, tracks)


def rigid_motion(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation R (3, 3) and translation t (3,) with target ≈ R source + t, least squares over
    the points (Kabsch; a reflection is never returned)."""
    source, target = np.asarray(source, float), np.asarray(target, float)
    mu_s, mu_t = source.mean(axis=0), target.mean(axis=0)
    covariance = (source - mu_s).T @ (target - mu_t)
    U, _, Vt = np.linalg.svd(covariance)
    d = np.sign(np.linalg.det(Vt.T @ U.T)) or 1.0
    R = Vt.T @ np.diag([1.0, 1.0, d]) @ U.T
    return R, mu_t - R @ mu_s


def ee_target(
    now: np.ndarray,
    future: np.ndarray,
    ee_pos: np.ndarray,
    ee_rot: np.ndarray,
    *,
    first_step: int = 4,
    min_move: float = 0.01,
    translation_only: bool = False,
    z_floor: float | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """The end effector's target (position (3,), rotation (3, 3)) and the future step it came
    from: the keypoints' rigid motion from `now` (K, 3) to `future[j]` ((H, K, 3)), from
    j = `first_step` on until it moves the end effector (at `ee_pos`, turned by `ee_rot`) more
    than `min_move`, else the last step, applied to the end effector's pose."""
    future = np.asarray(future, float)
    H = len(future)
    ee_pos, ee_rot = np.asarray(ee_pos, float), np.asarray(ee_rot, float)
    j = min(first_step, H - 1)
    while True:
        R, t = rigid_motion(now, future[j])
        if translation_only:
            R, t = np.eye(3), future[j].mean(axis=0) - np.asarray(now, float).mean(axis=0)
        position = R @ ee_pos + t
        if np.linalg.norm(position - ee_pos) > min_move or j == H - 1:
            break
        j += 1
    if z_floor is not None:
        position[2] = max(position[2], z_floor)
    return position, R @ ee_rot, j


class GripperHysteresis:
    """The gripper command from each view's grasp prediction: it closes when every view says
    grasp, and stays closed until none does (so one view's doubt never opens a held object, and
    one view's guess never closes on air)."""

    def __init__(self) -> None:
        self.closed = False

    def reset(self) -> None:
        self.closed = False

    def __call__(self, grasps: Sequence[bool]) -> bool:
        views = [bool(g) for g in grasps]
        self.closed = any(views) if self.closed else all(views)
        return self.closed
