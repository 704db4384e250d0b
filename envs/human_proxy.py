"""Human-proxy demonstrations: what a video of a person's hand gives a motion-track policy,
made in simulation so the cross-embodiment experiment of MT-π can run without people.

A human video has images and hand keypoints, and nothing of the robot: no state, no action, no
gripper reading. The proxy keeps exactly that. It is the scripted expert's episode, rendered
again with the gripper recoloured to a skin tone (or hidden) and the table in another colour
(`Appearance`); its keypoints are the gripper's, moved by a fixed distortion (a hand is not a
gripper: wider between thumb and finger, its base further back) and per-frame pixel noise (a
hand tracker's error); its grasp bit comes from the images, as it would from a video — a frame
grasps when both fingertips are within `grasp_radius_px` of the object's mask (a segmentation
render) for `grasp_frames` frames in a row — never from the gripper's state (METHODS §1b).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Appearance", "HumanProxy", "checkerboard", "distort_keypoints", "grasp_from_masks"]

SKIN_RGBA = (0.87, 0.67, 0.55, 1.0)
"""The gripper's colour in a proxy video."""
TABLE_RGBA = (0.35, 0.45, 0.6, 1.0)
"""The table's colour in a proxy video: a scene the robot's demonstrations never show."""


@dataclass(frozen=True)
class Appearance:
    """How a proxy video looks: the gripper in `gripper_rgba` (alpha 0 hides it), the table in
    `table_rgba`, and distractor textures on the floor and walls."""

    gripper_rgba: tuple[float, float, float, float] = SKIN_RGBA
    table_rgba: tuple[float, float, float, float] = TABLE_RGBA
    distractors: bool = True
    """Paint the floor and the walls with a checkerboard (`checkerboard`) instead of their own
    textures: clutter the robot's demonstrations never show."""


@dataclass(frozen=True)
class HumanProxy:
    """The settings of a human-proxy recording (`il record --source human-proxy`)."""

    noise_px: float = 1.0
    """Standard deviation of each keypoint's per-frame pixel noise."""
    spread: float = 1.3
    """The fingers' distance from the centre, times this: a hand opens wider than a gripper."""
    base_offset: float = 0.02
    """The centre point moved this far (m) back along the fingers, to where a hand's base is."""
    grasp_radius_px: float = 3.0
    """A fingertip this close to the object's mask touches it (pixels)."""
    grasp_frames: int = 5
    """Frames in a row of both fingertips touching before a frame counts as grasping."""
    hide_gripper: bool = False
    """Render without the gripper (alpha 0) instead of recolouring it."""

    def __post_init__(self) -> None:
        for name in ("noise_px", "spread", "base_offset", "grasp_radius_px"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"human proxy: {name} must be a number >= 0, got {value!r}")
        if self.spread <= 0:
            raise ValueError("human proxy: spread must be above 0")
        if int(self.grasp_frames) != self.grasp_frames or self.grasp_frames < 1:
            raise ValueError(
                f"human proxy: grasp_frames must be a whole number >= 1, got {self.grasp_frames}"
            )

    @property
    def appearance(self) -> Appearance:
        if self.hide_gripper:
            return Appearance(gripper_rgba=(0.0, 0.0, 0.0, 0.0))
        return Appearance()


def checkerboard(width: int, height: int, channels: int, squares: int = 8) -> np.ndarray:
    """A (height, width, channels) uint8 texture of `squares` x `squares` squares in two
    colours unlike anything in the scene (orange and teal)."""
    v, u = np.mgrid[0:height, 0:width]
    odd = ((u * squares // max(width, 1)) + (v * squares // max(height, 1))) % 2 == 1
    a, b = np.array([230, 120, 40, 255]), np.array([30, 150, 150, 255])
    return np.where(odd[..., None], a[:channels], b[:channels]).astype(np.uint8)


def distort_keypoints(points: np.ndarray, proxy: HumanProxy) -> np.ndarray:
    """The gripper's points (..., 5, 3) as a hand would place them: each finger's two points
    moved away from the centre line by `spread`, and the centre moved `base_offset` back along
    the fingers (from the tips towards the upper points). Fixed for every frame: the
    systematic part of the difference between a hand and a gripper."""
    points = np.asarray(points, dtype=np.float64)
    centre = points[..., 0:1, :]
    tips_mid = (points[..., 1:2, :] + points[..., 3:4, :]) / 2.0
    out = points.copy()
    # each finger point keeps its height along the finger, its distance across is scaled
    for tip, upper in ((1, 2), (3, 4)):
        across = points[..., tip : tip + 1, :] - tips_mid
        out[..., tip : tip + 1, :] = tips_mid + proxy.spread * across
        out[..., upper : upper + 1, :] = (
            points[..., upper : upper + 1, :] + (proxy.spread - 1.0) * across
        )
    uppers_mid = (points[..., 2:3, :] + points[..., 4:5, :]) / 2.0
    along = uppers_mid - tips_mid
    length = np.linalg.norm(along, axis=-1, keepdims=True)
    direction = np.divide(along, length, out=np.zeros_like(along), where=length > 0)
    out[..., 0:1, :] = centre + proxy.base_offset * direction
    return out


def grasp_from_masks(
    tips_px: np.ndarray, masks: np.ndarray, radius_px: float, frames: int
) -> np.ndarray:
    """Grasp bits (T,) from one camera's fingertip pixels (T, 2, 2) and object masks (T, H, W):
    a frame grasps once both fingertips have been within `radius_px` of the mask for `frames`
    frames in a row (counting this one), as a video's grasp labeller decides."""
    tips_px = np.asarray(tips_px, dtype=np.float64)
    masks = np.asarray(masks, dtype=bool)
    T, H, W = masks.shape
    touching = np.zeros(T, dtype=bool)
    vv, uu = np.mgrid[0:H, 0:W]
    for t in range(T):
        if not masks[t].any():
            continue
        ys, xs = vv[masks[t]], uu[masks[t]]
        near = []
        for u, v in tips_px[t]:
            d = np.min((xs - u) ** 2 + (ys - v) ** 2) if np.isfinite([u, v]).all() else np.inf
            near.append(d <= radius_px**2)
        touching[t] = all(near)
    run = 0
    grasp = np.zeros(T, dtype=bool)
    for t in range(T):
        run = run + 1 if touching[t] else 0
        grasp[t] = run >= frames
    return grasp
