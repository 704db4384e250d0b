"""A real RealSense `.bag` recording with known content, made without a camera.

librealsense's own software device stands in for the hardware: it has a depth sensor and a
colour sensor with intrinsics, depth units and depth-to-colour extrinsics, like a D400 camera,
and librealsense's own recorder writes what it streams to a `.bag` file. Played back through
`rs.pipeline`, such a file goes through exactly the code path a recording of a real camera does
(the file format, the playback device, `rs.align`), so `robots.realsense` is tested against the
vendor's library rather than against a mock of it.

The content is synthetic so that a test can check it pixel by pixel: the colour image is a
gradient (red grows to the right, green downwards) with a blue box that moves right by a fixed
step every frame; the depth image is a wall at `WALL_M` with the same box standing out at
`BOX_M`, in the same place, so depth aligned to colour puts `BOX_M` under the blue pixels.

    python -m robots.emulators.realsense_recording demo.bag   # then --camera realsense:demo.bag
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from robots.base import DriverError, vendor_library

__all__ = ["BOX_M", "WALL_M", "box", "synthetic_color", "synthetic_depth", "write_recording"]

WALL_M = 1.5
"""Depth of the background wall, metres."""
BOX_M = 0.6
"""Depth of the moving box, metres."""
BOX_RGB = (0, 0, 255)
FIRST_DEVICE_MS = 1000.0
"""Device clock of the first frame: the device's clock, unrelated to the host's."""


def box(index: int, width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel rectangle `(x0, y0, x1, y1)` (exclusive ends) of the box in frame `index`: a
    quarter of the image on each side, vertically centred, moving right and wrapping."""
    bw, bh = max(2, width // 4), max(2, height // 4)
    step = max(1, width // 16)
    x0 = (index * step) % (width - bw + 1)
    y0 = (height - bh) // 2
    return x0, y0, x0 + bw, y0 + bh


def synthetic_color(index: int, width: int, height: int) -> np.ndarray:
    """RGB `(height, width, 3)` uint8 of frame `index`."""
    x = np.linspace(0, 255, width).round().astype(np.uint8)
    y = np.linspace(0, 255, height).round().astype(np.uint8)
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = x[None, :]
    image[..., 1] = y[:, None]
    x0, y0, x1, y1 = box(index, width, height)
    image[y0:y1, x0:x1] = BOX_RGB
    return image


def synthetic_depth(index: int, width: int, height: int, depth_units: float = 0.001) -> np.ndarray:
    """Z16 depth `(height, width)` uint16 of frame `index`, in steps of `depth_units` metres."""
    depth = np.full((height, width), round(WALL_M / depth_units), np.uint16)
    x0, y0, x1, y1 = box(index, width, height)
    depth[y0:y1, x0:x1] = round(BOX_M / depth_units)
    return depth


def _intrinsics(rs: Any, width: int, height: int) -> Any:
    """A pinhole with a ~70° horizontal field of view (a D435's colour camera) and no
    distortion, so that aligning depth to colour is the identity map."""
    k = rs.intrinsics()
    k.width, k.height = width, height
    k.fx = k.fy = width / (2 * np.tan(np.radians(35.0)))
    k.ppx, k.ppy = (width - 1) / 2, (height - 1) / 2
    k.model = rs.distortion.none
    k.coeffs = [0.0] * 5
    return k


def _video_stream(rs: Any, kind: Any, fmt: Any, bpp: int, uid: int, k: Any, fps: int) -> Any:
    vs = rs.video_stream()
    vs.type, vs.index, vs.uid = kind, 0, uid
    vs.width, vs.height, vs.fps, vs.bpp, vs.fmt = k.width, k.height, fps, bpp, fmt
    vs.intrinsics = k
    return vs


def write_recording(
    path: str | Path,
    frames: int = 30,
    width: int = 64,
    height: int = 48,
    fps: int = 30,
    depth_units: float = 0.001,
) -> Path:
    """Write a recording of `frames` depth+colour frame pairs at `fps`; returns its path.

    Takes `frames / fps` seconds: frames are handed to the recorder at the stream's rate, so
    that real-time playback runs at it too. librealsense 2.57 and later write ROS 2 recordings
    and want the name to end in `.db3`; older versions write ROS 1 `.bag` files.

    Frame `i` of each stream has device frame number `i + 1` and device timestamp
    `FIRST_DEVICE_MS + i * 1000 / fps` (hardware clock domain), and shows `synthetic_color(i)`
    and `synthetic_depth(i)`."""
    rs = vendor_library("pyrealsense2", "realsense", "A RealSense recording")
    path = Path(path)
    if frames < 1 or width < 8 or height < 8 or fps < 1:
        raise DriverError(
            f"a recording needs at least 1 frame of 8x8 pixels at 1 fps or more; got {frames} "
            f"frames of {width}x{height} at {fps} fps"
        )
    if not path.parent.is_dir():
        raise DriverError(f"cannot write {path}: no directory {path.parent}")
    fps = int(fps)
    device = rs.software_device()
    depth_sensor = device.add_sensor("Stereo Module")
    color_sensor = device.add_sensor("RGB Camera")
    depth_sensor.add_read_only_option(rs.option.depth_units, float(depth_units))
    k = _intrinsics(rs, width, height)
    depth_profile = depth_sensor.add_video_stream(
        _video_stream(rs, rs.stream.depth, rs.format.z16, 2, 0, k, fps), True
    ).as_video_stream_profile()
    color_profile = color_sensor.add_video_stream(
        _video_stream(rs, rs.stream.color, rs.format.rgb8, 3, 1, k, fps), True
    ).as_video_stream_profile()
    # rs.align needs to know where colour sits relative to depth; here, at the same place.
    same_place = rs.extrinsics()
    same_place.rotation = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    same_place.translation = [0.0, 0.0, 0.0]
    depth_profile.register_extrinsics_to(color_profile, same_place)
    color_profile.register_extrinsics_to(depth_profile, same_place)
    device.register_info(rs.camera_info.name, "il synthetic RealSense")
    device.register_info(rs.camera_info.serial_number, "000000000000")

    try:
        recorder = rs.recorder(str(path), device)
    except RuntimeError as e:  # e.g. librealsense 2.57+ writes only `.db3` (ROS 2) files
        raise DriverError(f"librealsense cannot record to {path}: {e}") from None
    sinks = (rs.frame_queue(2 * frames), rs.frame_queue(2 * frames))
    depth_sensor.open(depth_profile)
    color_sensor.open(color_profile)
    depth_sensor.start(sinks[0])
    color_sensor.start(sinks[1])
    start = time.monotonic()
    try:
        for i in range(frames):
            # The file times each frame by when the recorder got it, and playback in real time
            # follows those times: push at the stream's rate, as a camera would.
            delay = start + i / fps - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            stamp = FIRST_DEVICE_MS + i * 1000.0 / fps
            for sensor, profile, pixels, bpp in (
                (depth_sensor, depth_profile, synthetic_depth(i, width, height, depth_units), 2),
                (color_sensor, color_profile, synthetic_color(i, width, height), 3),
            ):
                frame = rs.software_video_frame()
                frame.pixels = np.ascontiguousarray(pixels)
                frame.bpp = bpp
                frame.stride = width * bpp
                frame.timestamp = stamp
                frame.domain = rs.timestamp_domain.hardware_clock
                frame.frame_number = i + 1
                frame.profile = profile
                if bpp == 2:
                    frame.depth_units = float(depth_units)
                sensor.on_video_frame(frame)
    finally:
        for sensor in (depth_sensor, color_sensor):
            sensor.stop()
            sensor.close()
        recorder.pause()
        del recorder  # the recorder writes the file's index when it is destroyed
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m robots.emulators.realsense_recording",
        description="Write a synthetic RealSense .bag to try the realsense camera without one.",
    )
    parser.add_argument("path", type=Path, help="where to write the .bag")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=int, default=30)
    args = parser.parse_args(argv)
    try:
        out = write_recording(args.path, args.frames, args.width, args.height, args.fps)
    except DriverError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {out}: {args.frames} frames, {args.width}x{args.height} at {args.fps} fps")


if __name__ == "__main__":
    main()
