"""Real camera backends through the vendors' own libraries, without the hardware.

RealSense: a recording is made at test time by librealsense's software device and recorder
(`robots.emulators.realsense_recording`), then played by `RealSenseCamera` through
librealsense's pipeline, playback device and `rs.align`. OpenCV: a video written by OpenCV's
own writer is played by `OpenCVCamera` through OpenCV's FFmpeg reader. Nothing of ours is
mocked, and no test times anything: waits are bounded polls with deadlines.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from robots.base import CameraIntrinsics, DriverError, Frame, Robot, StaleFrameError
from robots.emulators.realsense_recording import (
    BOX_M,
    WALL_M,
    box,
    synthetic_color,
    write_recording,
)

rs = pytest.importorskip("pyrealsense2")
cv2 = pytest.importorskip("cv2")

from robots.opencv_camera import OpenCVCamera  # noqa: E402
from robots.realsense import RealSenseCamera, RealSenseFrame  # noqa: E402
from robots.registry import make_camera  # noqa: E402

W, H, FPS = 64, 48, 30
DEPTH_UNITS = 0.0005  # not librealsense's default, so a hard-coded 1 mm would show
DEADLINE = 30.0


def play_to_end(camera) -> list[Frame]:
    """Every distinct frame seen while polling `read_latest`, until the camera reports that
    its source ended (the newest frame going stale with the capture's error as cause)."""
    seen: dict[int, Frame] = {}
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        try:
            frame = camera.read_latest(max_age=0.05)
        except StaleFrameError as e:
            if "ended" in str(e):
                return [seen[i] for i in sorted(seen)]
            time.sleep(0.002)
            continue
        seen.setdefault(frame.index, frame)
        time.sleep(0.001)
    pytest.fail(f"{camera.name} did not end within {DEADLINE} s")


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    return write_recording(
        tmp_path_factory.mktemp("rs") / "synthetic.db3",
        frames=20,
        width=W,
        height=H,
        fps=FPS,
        depth_units=DEPTH_UNITS,
    )


# --- RealSense ----------------------------------------------------------------------------------
def test_realsense_playback_content_depth_and_end(recording):
    camera = RealSenseCamera(str(recording), real_time=False)
    assert camera.has_depth
    before = time.time()
    with camera:
        first = camera.wait_first(timeout=DEADLINE)
        k = camera.intrinsics
        frames = play_to_end(camera)
        with pytest.raises(StaleFrameError, match=r"recording .* ended after \d+ frames"):
            camera.read_latest(max_age=0.05)
    after = time.time()

    assert first.color.shape == (H, W, 3) and first.color.dtype == np.uint8
    # As recorded: a ~70 degree pinhole centred on the image.
    expected_f = W / (2 * np.tan(np.radians(35.0)))
    assert (k.width, k.height) == (W, H)
    assert k.fx == pytest.approx(expected_f, rel=1e-5)
    assert (k.cx, k.cy) == (pytest.approx((W - 1) / 2), pytest.approx((H - 1) / 2))

    assert frames and all(isinstance(f, RealSenseFrame) for f in frames)
    numbers = [f.frame_number for f in frames]
    assert numbers == sorted(set(numbers)) and numbers[0] >= 1 and numbers[-1] <= 20
    stamps = [f.timestamp for f in frames]
    assert all(before - 1.0 <= t <= after + 1.0 for t in stamps)  # host wall clock
    assert stamps == sorted(stamps)
    for f in frames:
        i = f.frame_number - 1  # the recording numbers its frames from 1
        assert f.index == f.frame_number
        assert f.timestamp_domain == "hardware_clock"
        assert f.device_timestamp_ms == pytest.approx(1000.0 + i * 1000.0 / FPS)
        np.testing.assert_array_equal(f.color, synthetic_color(i, W, H))
        # Depth aligned to colour, in metres: the box stands out where that depth frame drew
        # it. Faster than real time, the syncer may pair a colour frame with the next depth
        # frame; rs.align leaves the odd pixel uncovered (0, "no depth").
        assert f.depth is not None and f.depth.shape == (H, W) and f.depth.dtype == np.float32
        assert abs(f.depth_frame_number - f.frame_number) <= 1
        x0, y0, x1, y1 = box(f.depth_frame_number - 1, W, H)
        inside = f.depth[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1]
        assert np.median(inside[inside > 0]) == pytest.approx(BOX_M, abs=1e-4)
        outside = np.ones((H, W), bool)
        outside[max(y0 - 1, 0) : y1 + 1, max(x0 - 1, 0) : x1 + 1] = False
        valid = f.depth[outside & (f.depth > 0)]
        assert valid.size > 0.9 * outside.sum()
        np.testing.assert_allclose(valid, WALL_M, atol=1e-4)
        if f.depth_frame_number == f.frame_number:
            blue = np.all(f.color == (0, 0, 255), axis=-1)
            near = np.abs(f.depth - BOX_M) < 1e-3
            assert (blue == near)[f.depth > 0].mean() > 0.99


def test_realsense_real_time_playback_keeps_order(recording):
    camera = RealSenseCamera(str(recording), real_time=True, depth=False)
    assert not camera.has_depth
    with camera:
        frames = play_to_end(camera)
    numbers = [f.index for f in frames]
    assert len(numbers) >= 2 and numbers == sorted(set(numbers))
    assert all(f.depth is None for f in frames)
    assert [f.timestamp for f in frames] == sorted(f.timestamp for f in frames)


def test_realsense_looping_playback_survives_polls_that_time_out_at_the_rewind(
    tmp_path, monkeypatch
):
    """A loaded machine lets a frame poll time out now and then; when that happens as a looping
    recording rewinds (librealsense reports `stopped` for that instant) the camera goes on.
    Polls of 1 ms time out between nearly every pair of frames, so many of them meet a rewind."""
    import robots.realsense as backend

    monkeypatch.setattr(backend, "POLL_MS", 1)
    short = write_recording(tmp_path / "short.db3", frames=3, width=W, height=H, fps=FPS)
    camera = RealSenseCamera(str(short), loop=True)
    seen = 0
    with camera:
        last = camera.wait_first(timeout=DEADLINE).timestamp
        deadline = time.monotonic() + DEADLINE
        while seen < 60:  # twenty rewinds
            assert time.monotonic() < deadline, f"only {seen} frames in {DEADLINE} s"
            frame = camera.read_latest(max_age=1.0)  # raises once the capture has failed
            if frame.timestamp > last:
                seen, last = seen + 1, frame.timestamp
            time.sleep(0.002)


def test_realsense_square_size_keeps_intrinsics_consistent(recording):
    size = 32
    native = RealSenseCamera(str(recording), real_time=False)
    with native:
        native.wait_first(timeout=DEADLINE)
        k0 = native.intrinsics
    camera = RealSenseCamera(str(recording), real_time=False, size=size)
    with camera:
        frame = camera.wait_first(timeout=DEADLINE)
        k = camera.intrinsics
    assert frame.color.shape == (size, size, 3) and frame.depth.shape == (size, size)
    assert (k.width, k.height) == (size, size)
    # A point on the box, lifted to 3-D with the native intrinsics and projected with the
    # returned ones, lands on the box in the returned images.
    x0, y0, x1, y1 = box(frame.frame_number - 1, W, H)
    side = min(W, H)  # inside the centre square the crop keeps, with a margin
    u = float(np.clip((x0 + x1 - 1) / 2, (W - side) / 2 + 2, (W + side) / 2 - 3))
    v = (y0 + y1 - 1) / 2
    ray = np.linalg.inv(k0.matrix()) @ np.array([u, v, 1.0]) * BOX_M
    pu, pv, _ = k.matrix() @ ray / ray[2]
    col, row = round(pu), round(pv)
    patch = frame.depth[row - 1 : row + 2, col - 1 : col + 2]
    assert np.median(patch[patch > 0]) == pytest.approx(BOX_M, abs=1e-3)
    assert frame.color[row, col, 2] > 200 and frame.color[row, col, 0] < 60


def test_realsense_bad_sources_are_one_line_errors(tmp_path):
    with pytest.raises(DriverError) as missing:
        RealSenseCamera(str(tmp_path / "nothing.bag")).start()
    assert "no RealSense recording" in one_line(missing)
    with pytest.raises(DriverError) as unknown:
        RealSenseCamera("000000000042").start()
    assert "000000000042" in one_line(unknown) and "connected" in str(unknown.value)
    not_a_recording = tmp_path / "notes.bag"
    not_a_recording.write_text("not a recording")
    with pytest.raises(DriverError) as bad:
        RealSenseCamera(str(not_a_recording)).start()
    assert "cannot play" in one_line(bad)


def test_write_recording_refuses_nonsense(tmp_path):
    with pytest.raises(DriverError) as e:
        write_recording(tmp_path / "x.db3", frames=0)
    one_line(e)
    with pytest.raises(DriverError) as nowhere:
        write_recording(tmp_path / "missing" / "x.db3")
    assert "no directory" in one_line(nowhere)


# --- OpenCV -------------------------------------------------------------------------------------
VW, VH, VFRAMES = 64, 48, 12


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """Left half red, right half blue (so a BGR/RGB swap shows), and a green patch at the top
    left whose level encodes the frame's index. FFV1 is lossless and both written and read by
    the headless wheel's FFmpeg."""
    path = tmp_path_factory.mktemp("cv") / "colours.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 30, (VW, VH))
    assert writer.isOpened()
    for i in range(VFRAMES):
        bgr = np.zeros((VH, VW, 3), np.uint8)
        bgr[:, : VW // 2] = (0, 0, 200)
        bgr[:, VW // 2 :] = (220, 0, 0)
        bgr[:8, :8] = (0, 20 * i, 0)
        writer.write(bgr)
    writer.release()
    return path


def test_opencv_video_playback_rgb_order_and_end(video):
    camera = OpenCVCamera(str(video), real_time=False)
    with camera:
        camera.wait_first(timeout=DEADLINE)
        k = camera.intrinsics
        frames = play_to_end(camera)
        with pytest.raises(StaleFrameError, match=f"ended after {VFRAMES} frames"):
            camera.read_latest(max_age=0.05)
    assert frames
    for f in frames:
        assert f.color.shape == (VH, VW, 3) and f.color.dtype == np.uint8
        np.testing.assert_allclose(f.color[20, 10], (200, 0, 0), atol=8)  # RGB: red on the left
        np.testing.assert_allclose(f.color[20, 50], (0, 0, 220), atol=8)
        assert abs(int(f.color[3, 3, 1]) - 20 * f.index) <= 8
    assert [f.index for f in frames] == sorted({f.index for f in frames})
    # The default pinhole guess: 69 degrees across, centred.
    assert k == CameraIntrinsics(
        VW, VH, VW / 2 / np.tan(np.radians(34.5)), VW / 2 / np.tan(np.radians(34.5)), 31.5, 23.5
    )


def test_opencv_size_and_calibrated_intrinsics(video):
    calib = {"fx": 50.0, "fy": 51.0, "cx": 30.0, "cy": 22.0}
    camera = OpenCVCamera(str(video), size=24, intrinsics=calib, real_time=True, fps=60)
    with camera:
        frame = camera.wait_first(timeout=DEADLINE)
        k = camera.intrinsics
    assert frame.color.shape == (24, 24, 3)
    np.testing.assert_allclose(frame.color[12, 4], (200, 0, 0), atol=10)
    np.testing.assert_allclose(frame.color[12, 20], (0, 0, 220), atol=10)
    s = 24 / VH  # crop 48x48 from x=8, then scale
    assert (k.width, k.height) == (24, 24)
    assert k.fx == pytest.approx(50.0 * s) and k.fy == pytest.approx(51.0 * s)
    assert k.cx == pytest.approx((30.0 - 8 + 0.5) * s - 0.5)
    assert k.cy == pytest.approx((22.0 + 0.5) * s - 0.5)


def test_opencv_bad_sources_are_one_line_errors(tmp_path, video):
    with pytest.raises(DriverError) as device:
        OpenCVCamera("/dev/video99").start()
    assert "/dev/video99" in one_line(device)
    with pytest.raises(DriverError) as index:
        OpenCVCamera("99").start()
    assert "video" in one_line(index)
    with pytest.raises(DriverError) as missing:
        OpenCVCamera(str(tmp_path / "missing.mp4")).start()
    assert "no such video file" in one_line(missing)
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"\x00not a video" * 10)
    with pytest.raises(DriverError) as undecodable:
        OpenCVCamera(str(junk)).start()
    one_line(undecodable)
    with pytest.raises(DriverError) as mode:
        OpenCVCamera(str(video), width=1280, height=720).start()
    assert "1280x720" in one_line(mode)
    with pytest.raises(DriverError) as calib:
        OpenCVCamera(str(video), intrinsics={"fx": 1.0})
    assert "cx" in one_line(calib)


# --- through the registry -----------------------------------------------------------------------
def test_registry_makes_both_cameras(recording, video):
    from robots.sim import SimArm

    robot: Robot = SimArm("metaworld/reach-v3")  # never connected: real cameras do not need it
    cameras = [
        make_camera(robot, f"realsense:{recording}", size=32, real_time=False),
        make_camera(robot, f"opencv:{video}", size=32, real_time=False),
    ]
    assert isinstance(cameras[0], RealSenseCamera) and isinstance(cameras[1], OpenCVCamera)
    for camera in cameras:
        with camera:
            frame = camera.wait_first(timeout=DEADLINE)
            assert frame.color.shape == (32, 32, 3)
            assert camera.intrinsics.width == 32
            assert "/" not in camera.name and ":" not in camera.name
    assert cameras[0].has_depth and not cameras[1].has_depth
    with pytest.raises(DriverError) as e:
        make_camera(robot, f"realsense:{recording}", exposure=3)
    one_line(e)


# --- simulated depth ----------------------------------------------------------------------------
def test_sim_camera_depth_in_metres():
    from robots.sim import SimArm

    arm = SimArm("metaworld/reach-v3")
    with arm:
        camera = arm.camera("corner", size=48, depth=True)
        assert camera.has_depth
        with camera:
            frame = camera.wait_first(timeout=DEADLINE)
    depth = frame.depth
    assert depth is not None and depth.shape == (48, 48) and depth.dtype == np.float32
    assert np.all(np.isfinite(depth)) and np.all(depth > 0)
    # The corner camera looks down at the table: the bottom of the image (table) is a metre
    # or two away, the top (nothing in view) is at the far plane, much further.
    table = float(np.median(depth[-12:]))
    background = float(np.median(depth[:6]))
    assert 0.3 < table < 3.0 and background > 2 * table
    assert not arm.camera("corner").has_depth
