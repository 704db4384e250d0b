"""Intel RealSense depth cameras (D405, D415, D435, D455) through librealsense, as a `Camera`.

Colour comes as RGB, depth aligned to the colour image (`rs.align`) in metres, so pixel (v, u)
of `Frame.depth` is the distance along the optical axis of what pixel (v, u) of `Frame.color`
shows (0 where there is none: occlusions, and the odd pixel the alignment's rounding leaves
uncovered); intrinsics are the colour stream's. The same class plays a recording (`.bag`, or `.db3`
as librealsense 2.57 and later write them) through librealsense's own playback device and
pipeline, so a recording exercises the code path of a live camera.

Timestamps (`Frame.timestamp`, host wall clock in seconds):

- live, when the frame's timestamp domain is `global_time` (the device clock mapped onto the
  host's, the default on D400 cameras with metadata) or `system_time` (the host's clock when the
  frame arrived): that timestamp, converted from ms. `global_time` is the start of exposure,
  the most accurate capture time available;
- live, in the `hardware_clock` domain (the device's own clock, unrelated to the host's): the
  frame's `backend_timestamp` metadata (host time of arrival) when the device reports it, else
  the host time when the frame set was received;
- a recording: the host time when the frame set was received. The recorded times belong to the
  session that made the recording, so any other choice would make every played frame look
  stale.

A stream's timestamps never run backwards: one earlier than the previous frame's (the wall
clock stepped back, or the source changed between frames) is raised to it.

The device's own frame timestamp, its domain and the colour frame number are kept on the
`RealSenseFrame` (`device_timestamp_ms`, `timestamp_domain`, `frame_number`); `Frame.index` is
the colour frame number, so gaps mean frames the device produced and this reader missed.
"""

from __future__ import annotations

import contextlib
import datetime
import time
from dataclasses import dataclass
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

__all__ = ["RealSenseCamera", "RealSenseFrame"]

RECORDING_SUFFIXES = (".bag", ".db3")
POLL_MS = 200
"""How long one wait for frames lasts, so that `stop()` is noticed within this much."""
STALL_SECONDS = 5.0
"""A live camera that delivers nothing for this long is treated as lost."""
CLOCK_SANITY_SECONDS = 10.0
"""A host-clock timestamp further than this from now is not trusted (a clock not yet synced)."""


@dataclass(frozen=True)
class RealSenseFrame(Frame):
    """A `Frame` plus what the device said about it, for checking timing after the fact."""

    frame_number: int = -1
    """The colour frame's number from the device (or the recording)."""
    device_timestamp_ms: float = float("nan")
    """The colour frame's timestamp as the device reported it, ms, in `timestamp_domain`."""
    timestamp_domain: str = ""
    """`hardware_clock`, `system_time` or `global_time` (librealsense's names)."""
    depth_frame_number: int = -1
    """The number of the depth frame librealsense's syncer paired with the colour frame (-1
    without depth); on a live camera the two are exposed together, a recording played faster
    than real time can pair neighbours."""


def _resize_area(image: np.ndarray, size: int) -> np.ndarray:
    """Average of the source pixels each output pixel covers (exact for any ratio), through
    cumulative sums: the RealSense extra does not bring OpenCV along."""
    out = image.astype(np.float32)
    for axis in (0, 1):
        n = out.shape[axis]
        cs = np.concatenate(
            [np.zeros_like(np.take(out, [0], axis=axis)), np.cumsum(out, axis=axis)], axis=axis
        )
        edges = np.linspace(0.0, n, size + 1)
        lo = np.minimum(np.floor(edges).astype(int), n - 1)
        frac = (edges - lo).reshape([-1 if a == axis else 1 for a in range(out.ndim)])
        at = np.take(cs, lo, axis=axis) + frac * (
            np.take(cs, lo + 1, axis=axis) - np.take(cs, lo, axis=axis)
        )
        out = np.diff(at, axis=axis) * (size / n)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _resize_nearest(depth: np.ndarray, size: int) -> np.ndarray:
    """Nearest source pixel to each output pixel's centre: averaging depth across an edge
    would invent points floating between foreground and background."""
    n = depth.shape[0]
    idx = np.minimum(((np.arange(size) + 0.5) * n / size).astype(int), n - 1)
    return depth[np.ix_(idx, idx)]


class RealSenseCamera(ThreadedCamera):
    """A RealSense camera by serial number, or a recording by path.

    `width`/`height`/`fps` choose the live streams (both colour and depth; a mode the camera
    lacks is an error listing the camera's); a recording plays what was recorded and ignores
    them. `depth=False` streams colour only. `size` crops the centre square of both images and
    resizes it to `size` pixels, intrinsics following. `real_time=False` plays a recording as
    fast as it is read instead of at its recorded rate; `loop=True` plays it again and again.
    `label` names the camera in recordings (default `realsense_<serial or file stem>`).
    """

    def __init__(
        self,
        source: str,
        *,
        width: int = 640,
        height: int = 480,
        fps: float = 30,
        depth: bool = True,
        size: int | None = None,
        real_time: bool = True,
        loop: bool = False,
        label: str | None = None,
    ) -> None:
        if size is not None and int(size) <= 0:
            raise DriverError(f"realsense camera {source}: size must be positive, got {size}")
        if fps <= 0 or width <= 0 or height <= 0:
            raise DriverError(
                f"realsense camera {source}: width, height and fps must be positive, got "
                f"{width}x{height} at {fps}"
            )
        super().__init__(fps)
        self.source = str(source)
        self.is_recording = (
            Path(self.source).suffix.lower() in RECORDING_SUFFIXES
            or "/" in self.source
            or Path(self.source).is_file()
        )
        self.name = label or camera_name("realsense", self.source)
        self.width, self.height = int(width), int(height)
        self.depth = bool(depth)
        self.size = None if size is None else int(size)
        self.real_time = bool(real_time)
        self.loop = bool(loop)
        self.serial = "" if self.is_recording else self.source
        self._rs: Any = None
        self._pipeline: Any = None
        self._align: Any = None
        self._device: Any = None
        self._playback: Any = None
        self._native: CameraIntrinsics | None = None
        self._last_number: int | None = None
        self._last_stamp = float("-inf")
        self._count = 0

    @property
    def has_depth(self) -> bool:
        return self.depth

    @property
    def intrinsics(self) -> CameraIntrinsics:
        if self._native is None:
            raise DriverError(f"camera {self.name}: start it before asking for its intrinsics")
        return self._native if self.size is None else square_intrinsics(self._native, self.size)

    # --- opening ---------------------------------------------------------------------------
    def _open(self) -> None:
        rs = self._rs = vendor_library("pyrealsense2", "realsense", "RealSense camera")
        config = rs.config()
        if self.is_recording:
            path = Path(self.source)
            if not path.is_file():
                raise DriverError(f"no RealSense recording at {path}")
            config.enable_device_from_file(str(path), repeat_playback=self.loop)
            # Whatever was recorded, in the recorded format: asking for more fails to resolve.
            config.enable_stream(rs.stream.color)
            if self.depth:
                config.enable_stream(rs.stream.depth)
        else:
            self._check_connected(rs)
            config.enable_device(self.serial)
            fps = round(self.fps)
            config.enable_stream(rs.stream.color, self.width, self.height, rs.format.rgb8, fps)
            if self.depth:
                config.enable_stream(rs.stream.depth, self.width, self.height, rs.format.z16, fps)
        pipeline = rs.pipeline()
        try:
            profile = pipeline.start(config)
        except RuntimeError as e:
            raise DriverError(self._start_failed(rs, e)) from None
        self._pipeline = pipeline
        self._device = profile.get_device()
        if self.is_recording:
            self._playback = self._device.as_playback()
            if not self.real_time:
                # Playback starts in real time; rewinding after switching loses no frame.
                self._playback.pause()
                self._playback.set_real_time(False)
                self._playback.seek(datetime.timedelta(0))
                self._playback.resume()
        color = profile.get_stream(rs.stream.color).as_video_stream_profile()
        self.fps = float(color.fps()) or self.fps
        k = color.get_intrinsics()
        self._native = CameraIntrinsics(k.width, k.height, k.fx, k.fy, k.ppx, k.ppy)
        self._align = rs.align(rs.stream.color) if self.depth else None
        self._last_number = None
        self._last_stamp = float("-inf")
        self._count = 0

    def _check_connected(self, rs: Any) -> None:
        serials = [d.get_info(rs.camera_info.serial_number) for d in rs.context().query_devices()]
        if self.serial not in serials:
            found = ", ".join(serials) if serials else "none (check the USB 3 cable and udev rules)"
            raise DriverError(f"no RealSense camera with serial {self.serial}; connected: {found}")

    def _start_failed(self, rs: Any, e: RuntimeError) -> str:
        what = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if self.is_recording:
            streams = "colour and depth" if self.depth else "colour"
            return (
                f"cannot play {self.source} ({what}); it must be a RealSense recording with "
                f"{streams}" + (" (or set depth: false)" if self.depth else "")
            )
        modes = set()
        for device in rs.context().query_devices():
            if device.get_info(rs.camera_info.serial_number) != self.serial:
                continue
            for sensor in device.query_sensors():
                for p in sensor.get_stream_profiles():
                    if p.stream_type() == rs.stream.color and p.format() == rs.format.rgb8:
                        v = p.as_video_stream_profile()
                        modes.add((v.width(), v.height(), p.fps()))
        listed = ", ".join(f"{w}x{h}@{f}" for w, h, f in sorted(modes)) or "unknown"
        return (
            f"RealSense {self.serial} cannot stream {self.width}x{self.height} at "
            f"{round(self.fps)} fps ({what}); its colour modes: {listed}"
        )

    def _close(self) -> None:
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            with contextlib.suppress(RuntimeError):  # already stopped by a device that went away
                pipeline.stop()
        self._device = self._playback = self._align = None

    # --- capturing -------------------------------------------------------------------------
    def _capture(self) -> Frame:
        rs = self._rs
        waited = time.monotonic()
        while True:
            if not self._running.is_set():
                raise DriverError(f"camera {self.name} was stopped")
            try:
                ok, frames = self._pipeline.try_wait_for_frames(POLL_MS)
            except RuntimeError as e:
                raise self._lost(str(e)) from None
            arrived = time.time()
            if not ok:
                self._check_alive(waited)
                continue
            color = frames.get_color_frame()
            if not color:
                continue
            number = int(color.get_frame_number())
            # The syncer hands out a set per arriving frame; the colour frame decides.
            if number == self._last_number:
                continue
            self._last_number = number
            break
        depth_m = None
        depth_number = -1
        if self._align is not None:
            aligned = self._align.process(frames)
            depth = aligned.get_depth_frame()
            color = aligned.get_color_frame() or color
            if depth:
                depth_number = int(depth.get_frame_number())
                units = float(depth.get_units())
                depth_m = np.asanyarray(depth.get_data()).astype(np.float32) * np.float32(units)
        image = self._rgb(color)
        if self.size is not None:
            h, w = image.shape[:2]
            x0, y0, side = square_crop(w, h)
            image = _resize_area(image[y0 : y0 + side, x0 : x0 + side], self.size)
            if depth_m is not None:
                depth_m = _resize_nearest(depth_m[y0 : y0 + side, x0 : x0 + side], self.size)
        domain = color.get_frame_timestamp_domain()
        self._count += 1
        return RealSenseFrame(
            color=image,
            timestamp=self._monotonic(self._host_time(rs, color, domain, arrived)),
            index=number,
            depth=depth_m,
            frame_number=number,
            device_timestamp_ms=float(color.get_timestamp()),
            timestamp_domain=domain.name,
            depth_frame_number=depth_number,
        )

    def _rgb(self, color: Any) -> np.ndarray:
        rs = self._rs
        data = np.asanyarray(color.get_data())
        fmt = color.get_profile().format()
        if fmt == rs.format.rgb8:
            return data.copy()
        if fmt == rs.format.bgr8:
            return np.ascontiguousarray(data[..., ::-1])
        if fmt == rs.format.rgba8:
            return np.ascontiguousarray(data[..., :3])
        if fmt == rs.format.bgra8:
            return np.ascontiguousarray(data[..., 2::-1])
        raise DriverError(
            f"camera {self.name}: colour in {fmt.name} is not supported; record rgb8 or bgr8"
        )

    def _monotonic(self, stamp: float) -> float:
        self._last_stamp = max(stamp, self._last_stamp)
        return self._last_stamp

    def _host_time(self, rs: Any, color: Any, domain: Any, arrived: float) -> float:
        if self.is_recording:
            return arrived
        candidates = []
        if domain in (rs.timestamp_domain.global_time, rs.timestamp_domain.system_time):
            candidates.append(color.get_timestamp() / 1e3)
        if color.supports_frame_metadata(rs.frame_metadata_value.backend_timestamp):
            value = color.get_frame_metadata(rs.frame_metadata_value.backend_timestamp)
            candidates.append(value / 1e3)
        for stamp in candidates:
            if abs(stamp - arrived) < CLOCK_SANITY_SECONDS:
                return float(stamp)
        return arrived

    def _check_alive(self, waited: float) -> None:
        if self._playback is not None:
            stopped = self._playback.current_status() == self._rs.playback_status.stopped
            # A looping playback reports `stopped` for an instant as it rewinds; a poll that
            # times out then (a loaded machine) has not seen the end of anything.
            if stopped and not self.loop:
                raise DriverError(f"recording {self.source} ended after {self._count} frames")
        elif not self._device.is_connected():
            raise self._lost("the device is gone")
        if time.monotonic() - waited > STALL_SECONDS:
            raise self._lost(f"no frame for {STALL_SECONDS:.0f} s")

    def _lost(self, why: str) -> DriverError:
        if self.is_recording:
            return DriverError(f"playing {self.source} failed: {why}")
        return ConnectionLost(
            f"RealSense {self.serial} stopped streaming ({why}); check its USB 3 cable"
        )
