"""Pinhole camera models in the OpenCV convention, built from a MuJoCo camera.

Motion-track policies (not built yet; see the README) predict pixels and lift them back to
3-D, and real cameras are calibrated in OpenCV's convention (x right, y down, z forward, pixel
centres at integer coordinates), so the simulated cameras speak the same convention: a policy
trained in sim then needs only a real camera's calibration, not a different geometry.

MuJoCo's camera frame looks down its −z axis with y up; `R` below flips y and z to get OpenCV's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from einops import rearrange

if TYPE_CHECKING:
    import mujoco  # only `from_mujoco` needs it: a real camera's model is plain numpy

__all__ = ["CameraModel", "triangulate"]

# MuJoCo camera axes (x right, y up, −z forward) → OpenCV (x right, y down, z forward).
_MJ_TO_CV = np.diag([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class CameraModel:
    """Intrinsics `K` and extrinsics `R`, `t` (world → camera) of one camera at one size."""

    name: str
    width: int
    height: int
    K: np.ndarray
    """(3, 3) intrinsic matrix."""
    R: np.ndarray
    """(3, 3) rotation, world → camera (OpenCV axes)."""
    t: np.ndarray
    """(3,) translation, world → camera: x_cam = R x_world + t."""

    @classmethod
    def from_mujoco(
        cls,
        model: mujoco.MjModel,
        data: mujoco.MjData,
        camera: str | int,
        width: int,
        height: int,
    ) -> CameraModel:
        """Read the camera's current pose from `data` (call after `mj_forward`/`mj_step`) and its
        field of view from `model`; the principal point is the image centre, as MuJoCo renders."""
        import mujoco

        cam_id = camera if isinstance(camera, int) else model.camera(camera).id
        if not 0 <= cam_id < model.ncam:
            raise ValueError(f"camera id {cam_id} out of range (model has {model.ncam} cameras)")
        name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, cam_id) or str(cam_id)
        fovy = math.radians(float(model.cam_fovy[cam_id]))
        focal = (height / 2.0) / math.tan(fovy / 2.0)
        K = np.array(
            [[focal, 0.0, (width - 1) / 2.0], [0.0, focal, (height - 1) / 2.0], [0.0, 0.0, 1.0]]
        )
        cam_axes = data.cam_xmat[cam_id].reshape(3, 3)  # columns: camera axes in world
        R = _MJ_TO_CV @ cam_axes.T
        t = -R @ data.cam_xpos[cam_id]
        return cls(name=name, width=width, height=height, K=K, R=R, t=t)

    @property
    def P(self) -> np.ndarray:
        """(3, 4) projection matrix K [R | t]."""
        return self.K @ np.concatenate([self.R, self.t[:, None]], axis=1)

    @property
    def position(self) -> np.ndarray:
        """Camera centre in world coordinates."""
        return -self.R.T @ self.t

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """World points `(... 3)` → camera-frame points `(... 3)` (z is depth along the axis)."""
        points = np.asarray(points, dtype=np.float64)
        return points @ self.R.T + self.t

    def project(self, points: np.ndarray) -> np.ndarray:
        """World points `(... 3)` → pixel coordinates `(... 2)` as (u right, v down)."""
        cam = self.to_camera(points)
        uvw = cam @ self.K.T
        return uvw[..., :2] / uvw[..., 2:3]

    def depth(self, points: np.ndarray) -> np.ndarray:
        """Depth `(...)` of world points along the optical axis; negative is behind the camera."""
        return self.to_camera(points)[..., 2]

    def scaled(self, width: int, height: int) -> CameraModel:
        """This camera's image resized to `width` x `height`: pixel (u, v) moves to
        ((u + ½)·sx − ½, (v + ½)·sy − ½).

        With the aspect ratio kept this is exactly the camera MuJoCo renders at that size. With
        another aspect ratio it stretches pixels as an image resize does, whereas MuJoCo keeps
        the vertical field of view and square pixels (for that, use `from_mujoco`)."""
        sx, sy = width / self.width, height / self.height
        K = self.K.copy()
        K[0, 0] *= sx
        K[1, 1] *= sy
        K[0, 2] = (width - 1) / 2.0
        K[1, 2] = (height - 1) / 2.0
        return CameraModel(self.name, width, height, K, self.R.copy(), self.t.copy())


def triangulate(cameras: Sequence[CameraModel], pixels: Sequence[np.ndarray]) -> np.ndarray:
    """World points `(... 3)` seen at `pixels[i]` `(... 2)` in `cameras[i]`, by linear DLT.

    Each view adds two rows u·P₃ − P₁ and v·P₃ − P₂ per point; the point is the right singular
    vector of least singular value. Batched over any leading shape.
    """
    if len(cameras) < 2 or len(cameras) != len(pixels):
        raise ValueError(
            f"triangulate needs the same number (>= 2) of cameras and pixel arrays, "
            f"got {len(cameras)} cameras and {len(pixels)} pixel arrays"
        )
    uv = np.stack([np.asarray(p, dtype=np.float64) for p in pixels], axis=-2)  # (... v 2)
    lead = uv.shape[:-2]
    uv = uv.reshape(-1, len(cameras), 2)
    P = np.stack([c.P for c in cameras])  # (v 3 4)
    rows_u = uv[..., 0:1] * P[None, :, 2, :] - P[None, :, 0, :]  # (n v 4)
    rows_v = uv[..., 1:2] * P[None, :, 2, :] - P[None, :, 1, :]
    A = rearrange(np.stack([rows_u, rows_v], axis=2), "n v r c -> n (v r) c")
    # Scale rows so that far and near cameras weigh alike.
    A = A / np.linalg.norm(A, axis=-1, keepdims=True)
    _, _, vt = np.linalg.svd(A)
    X = vt[:, -1, :]
    points = X[:, :3] / X[:, 3:4]
    return points.reshape(*lead, 3)
