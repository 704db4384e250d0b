"""Videos of a person's hand as demonstrations: `il record --human-video CLIP`.

MT-π learns from robot demonstrations and from videos of a hand together, both as motion
tracks (`envs.tracks`). A clip is a folder holding what a lab records for that:

    clip/
      calibration.yaml   cameras: {front: {width, height, K, R, t}, side: {...}}  (two cameras,
                         OpenCV convention, R and t taking the robot's base frame into the
                         camera's, as for a robot session's cameras); fps: frames per second
      front/             frames 000000.png, 000001.png, ... (or front.mp4)
      side/              the same instants from the other camera (or side.mp4)
      keypoints.npz      per camera, (T, 21, 2) hand landmarks in MediaPipe's order or (T, 5, 2)
                         points already in the tracks' order, in pixels of the frames; optional
                         `grasp` (T,) bool

The landmarks come from a file, written by whatever tracker the lab runs: MediaPipe's current
wheels fetch their hand model at run time, and the older ones that ship it (0.10.14) pin
protobuf below 5 and pull in jax and OpenCV-contrib, too much to put beside the rest. From 21
landmarks the five points are MT-π's: the index finger's base as the centre, the
thumb's tip and last joint on one side, the index finger's tip and last joint on the other
(thumb on the gripper's left finger for a right hand, `hand="left"` swaps them). Without a
`grasp` array the grasp bit is a pinch: the thumb and index tips, lifted to 3-D from both
views, closer than `pinch_m`.

Each clip becomes one episode of source `human`: the two views (centre-cropped to squares of
`image_size`, the camera models changed to match), the tracks, the grasp, and success on its
last frame. Recording into a store that has a clip already skips it, so a folder of clips can
be recorded again after an interruption.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from envs.camera import CameraModel, triangulate
from envs.tracks import GRASP_KEY, KEYPOINTS, TRACKS_ATTR, camera_attrs, track_key, track_keys
from il.data.store import DemoStore, KeySpec, StoreSchema
from robots.base import CameraIntrinsics, square_crop, square_intrinsics

__all__ = ["HumanVideoError", "record_human_videos"]

HAND_21_TO_TRACK = {"right": (5, 4, 3, 8, 7), "left": (5, 8, 7, 4, 3)}
"""MediaPipe hand landmarks taken as the tracks' five points (`KEYPOINTS` order): index MCP,
then the gripper's left finger (tip, upper), then its right finger."""
_PINCH_GRASP = "thumb and index fingertips closer than {pinch_m} m (lifted from both views)"


class HumanVideoError(ValueError):
    """A clip that cannot be read as a demonstration, in one line."""


@dataclass(frozen=True)
class _Clip:
    path: Path
    cameras: tuple[CameraModel, ...]
    frames: dict[str, np.ndarray]
    points: dict[str, np.ndarray]
    grasp: np.ndarray | None
    fps: float


def record_human_videos(
    clips: str | Path,
    out: str,
    *,
    task: str,
    instruction: str | None = None,
    image_size: int = 84,
    hand: str = "right",
    pinch_m: float = 0.03,
) -> tuple[int, int]:
    """Record the clip at `clips` (or every clip folder inside it, in name order) into `out`
    as human episodes of `task`; returns (recorded, already there)."""
    if hand not in HAND_21_TO_TRACK:
        raise HumanVideoError(f"hand must be right or left, got {hand!r}")
    root = Path(clips)
    if not root.is_dir():
        raise HumanVideoError(f"no clip folder at {root}")
    folders = (
        [root]
        if (root / "calibration.yaml").exists()
        else sorted(p for p in root.iterdir() if (p / "calibration.yaml").exists())
    )
    if not folders:
        raise HumanVideoError(
            f"{root} holds no clip: a clip is a folder with calibration.yaml, a folder (or mp4) "
            "of frames per camera and keypoints.npz"
        )
    recorded = skipped = 0
    store: DemoStore | None = None
    try:
        for index, folder in enumerate(folders):
            clip = _read_clip(folder, image_size, hand)
            if store is None:
                store = DemoStore.open_or_create(out, _schema(clip, pinch_m))
            done = set(np.asarray(store.episode_meta()["seed"]).tolist())
            if index in done:
                skipped += 1
                continue
            steps = _episode(clip, pinch_m)
            store.add_episode(
                steps,
                task=task,
                instruction=instruction or task,
                success=True,
                seed=index,
                source="human",
            )
            recorded += 1
    finally:
        if store is not None:
            store.close()
    return recorded, skipped


def _schema(clip: _Clip, pinch_m: float) -> StoreSchema:
    grasp = (
        "from the clip's keypoints file"
        if clip.grasp is not None
        else (_PINCH_GRASP.format(pinch_m=pinch_m))
    )
    keys = {
        f"obs/image/{c.name}": KeySpec((c.height, c.width, 3), "uint8", f"RGB from camera {c.name}")
        for c in clip.cameras
    }
    whose = "the hand's points (index base; thumb and index finger tips and last joints)"
    for name, (shape, dtype, description) in track_keys(clip.cameras, grasp, whose).items():
        keys[name] = KeySpec(shape, dtype, description)
    keys["success"] = KeySpec((), "bool", "the demonstration is done (its last frame)")
    source = {"env": "human-video", TRACKS_ATTR: camera_attrs(clip.cameras, grasp)}
    return StoreSchema(keys=keys, fps=clip.fps, action={}, source=source)


def _episode(clip: _Clip, pinch_m: float) -> dict[str, np.ndarray]:
    steps: dict[str, np.ndarray] = {}
    for c in clip.cameras:
        steps[f"obs/image/{c.name}"] = clip.frames[c.name]
        steps[track_key(c.name)] = clip.points[c.name].astype(np.float32)
    if clip.grasp is not None:
        grasp = clip.grasp.astype(bool)
    else:
        tips = triangulate(clip.cameras, [clip.points[c.name][:, [1, 3]] for c in clip.cameras])
        grasp = np.linalg.norm(tips[:, 0] - tips[:, 1], axis=-1) < pinch_m
    steps[GRASP_KEY] = grasp
    success = np.zeros(len(grasp), dtype=bool)
    success[-1] = True
    steps["success"] = success
    return steps


def _read_clip(folder: Path, size: int, hand: str) -> _Clip:
    import yaml

    try:
        calibration = yaml.safe_load((folder / "calibration.yaml").read_text()) or {}
        described = calibration["cameras"]
        if not isinstance(described, dict) or len(described) != 2:
            raise HumanVideoError(f"{folder}/calibration.yaml must describe two cameras")
        models = [_camera(str(name), c) for name, c in described.items()]
    except (KeyError, TypeError, ValueError, yaml.YAMLError) as e:
        if isinstance(e, HumanVideoError):
            raise
        raise HumanVideoError(
            f"{folder}/calibration.yaml: cameras need width, height, K (3x3), R (3x3), t (3) ({e})"
        ) from None
    try:
        keypoints = dict(np.load(folder / "keypoints.npz"))
    except OSError as e:
        raise HumanVideoError(f"{folder}: cannot read keypoints.npz ({e})") from None
    frames, points, cameras = {}, {}, []
    lengths = set()
    for model in models:
        images = _frames(folder, model.name)
        if images.shape[1:3] != (model.height, model.width):
            raise HumanVideoError(
                f"{folder}: camera {model.name}'s frames are {images.shape[2]}x{images.shape[1]},"
                f" its calibration says {model.width}x{model.height}"
            )
        raw = keypoints.get(model.name)
        if raw is None:
            raise HumanVideoError(f"{folder}/keypoints.npz has no array {model.name!r}")
        raw = np.asarray(raw, dtype=np.float64)
        if raw.ndim != 3 or raw.shape[1:] not in ((21, 2), (len(KEYPOINTS), 2)):
            raise HumanVideoError(
                f"{folder}/keypoints.npz {model.name}: expected (T, 21, 2) landmarks or (T, 5, 2)"
                f" points, got {raw.shape}"
            )
        five = raw[:, list(HAND_21_TO_TRACK[hand])] if raw.shape[1] == 21 else raw
        square, crop = _square(model, size)
        frames[model.name] = _crop_resize(images, crop, size)
        points[model.name] = _move_points(five, crop, size)
        cameras.append(square)
        lengths |= {len(images), len(five)}
    grasp = keypoints.get("grasp")
    if grasp is not None:
        lengths.add(len(grasp))
    if len(lengths) != 1:
        raise HumanVideoError(
            f"{folder}: the cameras' frames and keypoints differ in length ({sorted(lengths)})"
        )
    fps = float(calibration.get("fps", 0.0) or 0.0)
    return _Clip(folder, tuple(cameras), frames, points, grasp, fps)


def _camera(name: str, c: dict[str, Any]) -> CameraModel:
    R, t = np.asarray(c["R"], float), np.asarray(c["t"], float)
    K = np.asarray(c["K"], float)
    if K.shape != (3, 3) or R.shape != (3, 3) or t.shape != (3,):
        raise ValueError("K and R must be 3x3 and t three numbers")
    return CameraModel(name, int(c["width"]), int(c["height"]), K, R, t)


def _frames(folder: Path, camera: str) -> np.ndarray:
    """A camera's frames: a folder of images in name order, or `<camera>.mp4`."""
    import imageio.v3 as iio

    images = folder / camera
    video = folder / f"{camera}.mp4"
    if images.is_dir():
        files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not files:
            raise HumanVideoError(f"{images} holds no .png or .jpg frames")
        return np.stack([np.asarray(iio.imread(p))[..., :3] for p in files])
    if video.exists():
        return np.asarray(iio.imread(video))[..., :3]
    raise HumanVideoError(f"{folder}: no frames for camera {camera} ({images}/ or {video})")


def _square(model: CameraModel, size: int) -> tuple[CameraModel, tuple[int, int, int]]:
    """The centred square crop of the camera's image, resized to `size`, as a robot camera
    delivers its frames (`robots.base.square_crop`): its model and the crop (x0, y0, side)."""
    k = square_intrinsics(
        CameraIntrinsics(
            model.width,
            model.height,
            float(model.K[0, 0]),
            float(model.K[1, 1]),
            float(model.K[0, 2]),
            float(model.K[1, 2]),
        ),
        size,
    )
    K = np.array(k.matrix(), dtype=np.float64)
    square = CameraModel(model.name, size, size, K, model.R, model.t)
    return square, square_crop(model.width, model.height)


def _crop_resize(images: np.ndarray, crop: tuple[int, int, int], size: int) -> np.ndarray:
    from PIL import Image

    x0, y0, side = crop
    out = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(im[y0 : y0 + side, x0 : x0 + side])).resize(
                (size, size), Image.Resampling.BILINEAR
            )
        )
        for im in images
    ]
    return np.stack(out).astype(np.uint8)


def _move_points(points: np.ndarray, crop: tuple[int, int, int], size: int) -> np.ndarray:
    """Pixels of the full frame → pixels of the cropped, resized one (centres at integers)."""
    x0, y0, side = crop
    s = size / side
    moved = points.copy()
    moved[..., 0] = (points[..., 0] - x0 + 0.5) * s - 0.5
    moved[..., 1] = (points[..., 1] - y0 + 0.5) * s - 0.5
    return moved
