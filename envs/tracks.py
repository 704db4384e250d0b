"""Motion tracks: where five points fixed on the gripper appear in each of two calibrated
cameras, and whether it grasps — the action of a motion-track policy (MT-π), which a person's
hand can show as well as a robot's.

The points are the gripper's centre and two on each finger, one at the tip and one further up
(`KEYPOINTS`), so that a hand's wrist, thumb and index finger can stand for them. They are
stored in pixels of each camera's image, as OpenCV reads them (`envs.camera`), with the
cameras' models beside them in the store's `source` attributes (`camera_attrs`), so a store
says everything that lifting its tracks back to 3-D needs (`cameras_from_attrs`,
`envs.camera.triangulate`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from envs.camera import CameraModel

__all__ = [
    "GRASP_KEY",
    "KEYPOINTS",
    "TRACKS_ATTR",
    "camera_attrs",
    "cameras_from_attrs",
    "project_keypoints",
    "track_key",
    "track_keys",
]

KEYPOINTS: tuple[str, ...] = ("centre", "left tip", "left upper", "right tip", "right upper")
"""The gripper's five points, in the order every track stores them."""
GRASP_KEY = "track/grasp"
"""The per-step key of the grasp bit."""
TRACKS_ATTR = "tracks"
"""The store's `source` attribute describing its tracks (`camera_attrs`)."""


def track_key(camera: str) -> str:
    """The per-step key of the gripper's points in `camera`'s image: (5, 2) pixels (u, v)."""
    return f"track/{camera}"


def track_keys(
    cameras: Sequence[CameraModel], grasp: str, whose: str = "the gripper's points"
) -> dict[str, tuple[tuple[int, ...], str, str]]:
    """The per-step keys of tracks in `cameras` and of the grasp bit (read as `grasp` says),
    each as (shape, dtype, description), for a recorder's schema. `whose`: what the points
    are, for the description (a proxy's are a hand tracker's)."""
    keys: dict[str, tuple[tuple[int, ...], str, str]] = {
        track_key(c.name): (
            (len(KEYPOINTS), 2),
            "float32",
            f"motion track: {whose} ({', '.join(KEYPOINTS)}) in camera {c.name}'s image, pixels "
            f"(u right, v down) at {c.width}x{c.height}; the camera's model in attrs "
            f"source.{TRACKS_ATTR}",
        )
        for c in cameras
    }
    if cameras:
        keys[GRASP_KEY] = ((), "bool", f"motion track's grasp bit: {grasp}")
    return keys


def project_keypoints(cameras: Sequence[CameraModel], points: np.ndarray) -> np.ndarray:
    """The gripper's points `(5, 3)` in world coordinates → pixels `(cameras, 5, 2)`."""
    points = np.asarray(points, dtype=np.float64)
    if points.shape != (len(KEYPOINTS), 3):
        raise ValueError(f"gripper keypoints must be ({len(KEYPOINTS)}, 3), got {points.shape}")
    return np.stack([camera.project(points) for camera in cameras])


def camera_attrs(cameras: Sequence[CameraModel], grasp: str) -> dict[str, Any]:
    """What a store keeps about its tracks: the keypoints' names, how the grasp bit was read
    (`grasp`, in words) and each camera's model, as plain JSON."""
    return {
        "keypoints": list(KEYPOINTS),
        "grasp": grasp,
        "cameras": {
            c.name: {
                "width": c.width,
                "height": c.height,
                "K": c.K.tolist(),
                "R": c.R.tolist(),
                "t": c.t.tolist(),
            }
            for c in cameras
        },
    }


def cameras_from_attrs(attrs: Mapping[str, Any]) -> list[CameraModel]:
    """The camera models a store's `tracks` attribute describes, in its order."""
    cameras = attrs.get("cameras") if isinstance(attrs, Mapping) else None
    if not isinstance(cameras, Mapping) or not cameras:
        raise ValueError("the tracks attribute names no cameras; record the store again")
    return [
        CameraModel(
            name=str(name),
            width=int(c["width"]),
            height=int(c["height"]),
            K=np.asarray(c["K"], dtype=np.float64),
            R=np.asarray(c["R"], dtype=np.float64),
            t=np.asarray(c["t"], dtype=np.float64),
        )
        for name, c in cameras.items()
    ]
