"""Where a parallel gripper's motion-track points are (`envs.tracks`), for arms that report
their tool pose: the five points in the arm's base frame from the TCP position, its rotation
and how far the gripper is closed.

A simulated arm knows its fingers exactly and reports them itself (`robots.sim`); a real arm
knows only its tool pose, so the points come from a model of the gripper: in the TCP frame (z
along the approach, y across the fingers) the centre at the TCP, each fingertip half the
opening to either side, and a point further up each finger. The defaults are MT-π's (5 cm to
either side when open, 2.5 cm when closed, 7.5 cm between the two points of a finger); a
setup YAML gives its own gripper's in `options: gripper_geometry:`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from robots.rotations import matrix_from_rotvec

__all__ = ["GripperGeometry"]


@dataclass(frozen=True)
class GripperGeometry:
    """A parallel gripper's track points, in metres in the TCP frame."""

    open_half_width: float = 0.05
    """Each fingertip's distance from the centre with the gripper open."""
    closed_half_width: float = 0.025
    """... and closed (on nothing: the fingers stop at an object's width before that)."""
    finger_length: float = 0.075
    """From a fingertip to the point further up its finger, back along the approach."""

    def __post_init__(self) -> None:
        for name in ("open_half_width", "closed_half_width", "finger_length"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and np.isfinite(value) and value >= 0):
                raise ValueError(f"gripper_geometry: {name} must be a length >= 0, got {value!r}")
        if self.closed_half_width > self.open_half_width:
            raise ValueError(
                "gripper_geometry: closed_half_width must not be above open_half_width"
            )

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> GripperGeometry:
        """From a setup YAML's `gripper_geometry:` mapping (None: the defaults)."""
        if options is None:
            return cls()
        if not isinstance(options, Mapping):
            raise ValueError("gripper_geometry must be a mapping of lengths in metres")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(
                f"gripper_geometry: unknown key {unknown[0]!r}; valid keys: "
                + ", ".join(sorted(known))
            )
        return cls(**{k: float(v) for k, v in options.items()})

    def points(self, position: np.ndarray, rotvec: np.ndarray, closed: float) -> np.ndarray:
        """The five points (5, 3) in the base frame, in `envs.tracks.KEYPOINTS` order, for a
        TCP at `position` turned by the rotation vector `rotvec`, the gripper `closed` from 0
        (open) to 1 (closed)."""
        closed = float(np.clip(closed, 0.0, 1.0))
        w = self.open_half_width + (self.closed_half_width - self.open_half_width) * closed
        up = -self.finger_length  # back along the approach
        local = np.array(
            [[0.0, 0.0, 0.0], [0.0, w, 0.0], [0.0, w, up], [0.0, -w, 0.0], [0.0, -w, up]]
        )
        R = matrix_from_rotvec(np.asarray(rotvec, dtype=np.float64))
        return local @ R.T + np.asarray(position, dtype=np.float64)
