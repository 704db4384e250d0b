"""USB (UVC) cameras and video files through OpenCV, as a `Camera`.

Webcams and most USB cameras on robot arms speak UVC; OpenCV's V4L2 backend reads them on
Linux, and its FFmpeg backend reads video files, which makes a recorded video a stand-in for a
camera (paced at `fps`, ending when the file does).

Timestamps are the host's wall clock taken right after `grab()` returns, before decoding:
`CAP_PROP_POS_MSEC` is not a capture time on UVC devices (V4L2 reports a monotonic driver time,
some cameras report nothing), and decoding an MJPG frame takes milliseconds that are not part of
the picture's age. The frame was exposed somewhat earlier than that (exposure plus USB
transfer, typically 10-40 ms), which no UVC camera reports reliably.

Intrinsics: a UVC camera does not report them, so they are a pinhole guess from the horizontal
field of view (`hfov_deg`, the datasheet value; 69° is a typical webcam), or, better, the
result of a calibration given as `intrinsics: {fx, fy, cx, cy}` in pixels of the capture
resolution (before `size`).
"""

from __future__ import annotations

import glob
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from robots.base import (
    CameraIntrinsics,
    ConnectionLost,
    DriverError,
    Frame,
    ThreadedCamera,
    camera_name,
    square_crop,
    square_intrinsics,
    vendor_library,
)

__all__ = ["OpenCVCamera"]


def pinhole_guess(width: int, height: int, hfov_deg: float) -> CameraIntrinsics:
    """Square pixels, principal point at the centre, focal length from the horizontal field of
    view: good to a few percent for an undistorted lens, which is as good as a datasheet."""
    if not 1.0 < hfov_deg < 179.0:
        raise DriverError(f"hfov_deg must be between 1 and 179 degrees, got {hfov_deg}")
    f = width / 2 / math.tan(math.radians(hfov_deg) / 2)
    return CameraIntrinsics(width, height, f, f, (width - 1) / 2, (height - 1) / 2)


def _video_devices() -> str:
    found = sorted(glob.glob("/dev/video*"), key=lambda p: (len(p), p))
    return ", ".join(found) if found else "none (is a camera plugged in?)"


class OpenCVCamera(ThreadedCamera):
    """A UVC camera (an index such as "0", or a device such as "/dev/video2") or a video file,
    read by a background thread; frames are RGB.

    `width`/`height`/`fps`/`fourcc` ask a device for a capture mode (see `v4l2-ctl
    --list-formats-ext`); a mode the camera does not have is an error, not a silent
    substitute. `fourcc="MJPG"` is what most cameras need for 30 fps above 640x480 over USB 2.
    A video file plays at `fps` when `real_time` (as fast as it is read otherwise) and the
    camera stops at its end. `size` crops the centre square and resizes it to `size` pixels.
    `label` names the camera in recordings (default `opencv_<device or file stem>`).
    """

    def __init__(
        self,
        source: str,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float = 30,
        size: int | None = None,
        fourcc: str | None = None,
        real_time: bool = True,
        hfov_deg: float = 69.0,
        intrinsics: Mapping[str, float] | None = None,
        label: str | None = None,
    ) -> None:
        if fps <= 0:
            raise DriverError(f"opencv camera {source}: fps must be positive, got {fps}")
        if size is not None and int(size) <= 0:
            raise DriverError(f"opencv camera {source}: size must be positive, got {size}")
        if fourcc is not None and len(fourcc) != 4:
            raise DriverError(f"opencv camera {source}: fourcc is 4 characters (MJPG, YUYV)")
        if intrinsics is not None:
            missing = {"fx", "fy", "cx", "cy"} - set(intrinsics)
            if missing:
                raise DriverError(
                    f"opencv camera {source}: intrinsics need fx, fy, cx, cy (pixels); "
                    f"missing {', '.join(sorted(missing))}"
                )
        super().__init__(fps)
        self.source = str(source)
        self.name = label or camera_name("opencv", self.source)
        self.width = None if width is None else int(width)
        self.height = None if height is None else int(height)
        self.size = None if size is None else int(size)
        self.fourcc = fourcc
        self.real_time = bool(real_time)
        self.hfov_deg = float(hfov_deg)
        self.calibration = None if intrinsics is None else dict(intrinsics)
        self.is_file = Path(self.source).is_file()
        self._cap: Any = None
        self._cv2: Any = None
        self._native: CameraIntrinsics | None = None
        self._index = 0
        self._next = 0.0

    def _open_failed(self) -> str:
        devices = _video_devices()
        if self.is_file:
            return f"cannot decode video {self.source}; is it a format OpenCV's FFmpeg reads?"
        device = self.source if self.source.startswith("/dev/") else f"/dev/video{self.source}"
        if not Path(device).exists():
            return f"no camera {device}; video devices here: {devices}"
        return (
            f"cannot open camera {self.source}: another program may hold it, or you may lack "
            f"permission (join the `video` group); video devices here: {devices}"
        )

    @property
    def intrinsics(self) -> CameraIntrinsics:
        if self._native is None:
            raise DriverError(f"camera {self.name}: start it before asking for its intrinsics")
        return self._native if self.size is None else square_intrinsics(self._native, self.size)

    def _open(self) -> None:
        cv2 = self._cv2 = vendor_library("cv2", "opencv", "USB camera")
        src: int | str = int(self.source) if self.source.isdigit() else self.source
        if self.is_file:
            cap = cv2.VideoCapture(self.source)
        else:
            if isinstance(src, str) and not src.startswith("/dev/"):
                raise DriverError(
                    f"opencv camera {self.source!r}: no such video file or device; video "
                    f"devices here: {_video_devices()}"
                )
            cap = cv2.VideoCapture(src, cv2.CAP_V4L2)
        if not cap.isOpened():
            cap.release()
            raise DriverError(self._open_failed())
        try:
            self._configure(cap)
        except BaseException:
            cap.release()
            raise
        self._cap = cap
        self._index = 0
        self._next = time.monotonic()

    def _configure(self, cap: Any) -> None:
        cv2 = self._cv2
        if not self.is_file:
            # The order matters to V4L2: the pixel format first, then the size, then the rate.
            if self.fourcc:
                cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*self.fourcc))
            if self.width:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            if self.height:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            cap.set(cv2.CAP_PROP_FPS, self.fps)
        w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if (self.width and self.width != w) or (self.height and self.height != h):
            fix = (
                "drop width/height (use size to scale)"
                if self.is_file
                else "pick a mode from `v4l2-ctl -d <device> --list-formats-ext`"
            )
            raise DriverError(
                f"camera {self.source} gives {w}x{h}, not the {self.width or w}x"
                f"{self.height or h} asked for; {fix}"
            )
        if self.calibration is not None:
            c = self.calibration
            self._native = CameraIntrinsics(
                w, h, float(c["fx"]), float(c["fy"]), float(c["cx"]), float(c["cy"])
            )
        else:
            self._native = pinhole_guess(w, h, self.hfov_deg)

    def _close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()

    def _capture(self) -> Frame:
        cv2, cap = self._cv2, self._cap
        if self.is_file and self.real_time:  # a file plays at the rate a camera would
            delay = self._next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._next = max(self._next + 1.0 / self.fps, time.monotonic())
        grabbed = cap.grab()
        stamp = time.time()
        ok, image = cap.retrieve() if grabbed else (False, None)
        if not ok or image is None:
            if self.is_file:
                raise DriverError(f"video {self.source} ended after {self._index} frames")
            raise ConnectionLost(
                f"camera {self.source} stopped delivering frames after {self._index} "
                "(unplugged? check the cable and `ls /dev/video*`)"
            )
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        else:
            image = cv2.cvtColor(
                image, cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
            )
        if self.size is not None:
            h, w = image.shape[:2]
            x0, y0, side = square_crop(w, h)
            image = image[y0 : y0 + side, x0 : x0 + side]
            interp = cv2.INTER_AREA if side >= self.size else cv2.INTER_LINEAR
            image = cv2.resize(image, (self.size, self.size), interpolation=interp)
        index, self._index = self._index, self._index + 1
        return Frame(color=np.ascontiguousarray(image), timestamp=stamp, index=index)
