"""What a store's motion tracks say (`envs.tracks`): for `il info`, and for checking a store's
tracks before a motion-track policy learns from them.

The check that matters is whether the views agree: each step's points are lifted to 3-D from
both cameras and projected back, and the distance to the stored pixels (the reprojection
error) is small only where the tracks and the camera models belong together. A tracker's
error, a camera moved after calibration or a store whose images were resized shows up there
first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.camera import triangulate
from envs.tracks import GRASP_KEY, TRACKS_ATTR, cameras_from_attrs, track_key

__all__ = ["track_statistics"]


def track_statistics(store: Any) -> dict[str, Any] | None:
    """Per camera: its size and the share of steps with every point inside its image; the share
    of steps that grasp; the reprojection error in pixels (mean and 99th percentile) of the
    points lifted from both views. None for a store without tracks."""
    attrs = store.schema.source.get(TRACKS_ATTR)
    if not isinstance(attrs, dict):
        return None
    cameras = cameras_from_attrs(attrs)
    keys = [track_key(c.name) for c in cameras]
    missing = [k for k in keys if k not in store.schema.keys]
    if missing:
        return {"error": f"attrs name a camera whose key {missing[0]} the store lacks"}
    read = [*keys, *([GRASP_KEY] if GRASP_KEY in store.schema.keys else [])]
    inside = np.zeros(len(cameras))
    grasping = steps = 0
    errors: list[np.ndarray] = []
    for i in range(store.num_episodes):
        arrays = store.read_episode(i, read)
        pixels = [np.asarray(arrays[k], np.float64) for k in keys]  # (T, 5, 2) each
        steps += len(pixels[0])
        for c, (camera, uv) in enumerate(zip(cameras, pixels, strict=True)):
            within = (
                (uv[..., 0] >= -0.5)
                & (uv[..., 0] <= camera.width - 0.5)
                & (uv[..., 1] >= -0.5)
                & (uv[..., 1] <= camera.height - 0.5)
            )
            inside[c] += within.all(axis=-1).sum()
        if GRASP_KEY in arrays:
            grasping += int(np.asarray(arrays[GRASP_KEY], bool).sum())
        if len(cameras) >= 2 and len(pixels[0]):
            points = triangulate(cameras, pixels)
            for camera, uv in zip(cameras, pixels, strict=True):
                errors.append(np.linalg.norm(camera.project(points) - uv, axis=-1).ravel())
    error = np.concatenate(errors) if errors else np.zeros(0)
    return {
        "cameras": {
            c.name: {
                "size": [c.width, c.height],
                "inside": float(inside[k] / steps) if steps else 0.0,
            }
            for k, c in enumerate(cameras)
        },
        "keypoints": list(attrs.get("keypoints", [])),
        "grasp": attrs.get("grasp"),
        "grasping": grasping / steps if steps else 0.0,
        "reprojection_px": {
            "mean": float(error.mean()) if error.size else None,
            "p99": float(np.percentile(error, 99)) if error.size else None,
        },
    }
