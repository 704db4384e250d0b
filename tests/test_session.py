"""`il deploy`, `il replay` and the session loop on the simulated arm: real MuJoCo, real zarr,
a real trained checkpoint, the real safety filter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import config_for

from il.data.store import DemoStore
from il.session import Session, robot_schema
from il.train import train
from robots.safety import SafeRobot, SafetyConfig
from robots.sim import SIM_SAFETY, SimArm

IL = [sys.executable, "-m", "il.cli"]


def run_il(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([*IL, *args], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"il {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def checkpoint(store_path, tmp_path_factory) -> str:
    """A BC policy trained by `il train`'s code on the expert store (reach and push)."""
    out = tmp_path_factory.mktemp("deploy") / "run"
    train(config_for(store_path, out))
    return str(out)


def test_deploy_records_policy_episodes_with_timestamps(checkpoint, tmp_path):
    out = tmp_path / "deploy.zarr"
    proc = run_il(
        "deploy",
        "--checkpoint",
        checkpoint,
        "--robot",
        "sim:metaworld/reach-v3",
        "--camera",
        "corner",
        "--hz",
        "80",
        "--record",
        str(out),
        "--episodes",
        "2",
        "--max-episode-steps",
        "25",
    )
    assert "2 episodes saved" in proc.stdout
    with DemoStore.open(out) as store:
        assert store.num_episodes == 2
        meta = store.episode_meta()
        assert list(meta["source"]) == ["policy", "policy"]
        assert list(meta["task"]) == ["reach-v3"] * 2
        assert list(meta["seed"]) == [0, 1]  # each episode in its own, replayable scene
        ep = store.read_episode(0)
        assert len(ep["action"]) == 25
        assert np.all(np.diff(ep["time/step"]) > 0)  # wall-clock stamps, increasing
        # the robot was observed and the frame captured no later than the step that used them
        assert np.all(ep["time/robot"] >= ep["time/step"] - 1e-3)
        assert np.all(ep["time/image/corner"] <= ep["time/robot"] + 1e-3)
        assert ep["obs/image/corner"].shape == (25, 84, 84, 3)
        assert np.all(np.abs(ep["action"]) <= 1.0) and not ep["intervention"].any()
        assert store.schema.action["type"] == "ee_delta"
        assert store.schema.source["safety"]["max_speed"] == 1.0


def test_replay_plays_a_recorded_episode_back(checkpoint, tmp_path):
    out = tmp_path / "deploy.zarr"
    run_il(
        "deploy",
        "--checkpoint",
        checkpoint,
        "--robot",
        "sim:metaworld/reach-v3",
        "--record",
        str(out),
        "--max-episode-steps",
        "30",
    )
    proc = run_il("replay", str(out), "--episode", "0", "--robot", "sim:metaworld/reach-v3")
    assert "30 steps" in proc.stdout
    bad = subprocess.run(
        [*IL, "replay", str(out), "--episode", "5", "--robot", "sim:metaworld/reach-v3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "has 1 episodes" in bad.stderr
    assert "Traceback" not in bad.stderr


class _Scripted:
    """A policy that asks for dangerous actions: NaN, far out of bounds, then out of the box."""

    spec = None

    def __init__(self) -> None:
        self.t = 0

    def reset(self, task: str | None = None) -> None:
        self.t = 0

    def act(self, observation: dict) -> np.ndarray:
        self.t += 1
        if self.t % 3 == 0:
            return np.array([np.nan, 0.0, 0.0, 1.0])
        return np.array([0.0, 0.0, 50.0, 1.0])  # straight up, fifty times the bound


def test_nan_and_out_of_workspace_commands_never_reach_the_arm(tmp_path):
    arm = SimArm("metaworld/reach-v3")
    safe = SafeRobot(arm, SafetyConfig.from_dict(SIM_SAFETY))
    with safe:
        store = DemoStore.create(tmp_path / "s.zarr", robot_schema(safe, [], {}))
        session = Session(safe, hz=400, policy=_Scripted(), store=store)
        session.run(episodes=1, max_steps=120)
        ep = store.read_episode(0)
        store.close()
    assert np.isfinite(ep["action"]).all()  # NaN was replaced by hold
    assert np.isnan(ep["action_requested"][2::3, 0]).all()
    assert np.abs(ep["action"]).max() <= 1.0
    top = SIM_SAFETY["workspace_high"][2]
    assert ep["obs/ee_pos"][:, 2].max() <= top + 0.005  # the hand stopped at the box's top
    assert ep["safety_limited"].all()
    assert session.report.safety["rejections"]["non_finite"] == 40


def test_kill_9_during_deploy_recording_keeps_every_saved_episode(checkpoint, tmp_path):
    out = tmp_path / "killed.zarr"
    args = [
        *IL,
        "deploy",
        "--checkpoint",
        checkpoint,
        "--robot",
        "sim:metaworld/reach-v3",
        "--record",
        str(out),
        "--episodes",
        "1000",
        "--max-episode-steps",
        "20",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.2)
            if out.exists():
                with DemoStore.open(out) as store:
                    if store.num_episodes >= 3:
                        break
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    with DemoStore.open(out) as store:
        n = store.num_episodes
        assert n >= 3
        for i in range(n):  # every committed episode is whole
            ep = store.read_episode(i)
            assert len(ep["action"]) == 20 and np.isfinite(ep["obs/state"]).all()
    # and the store takes new episodes after the crash
    run_il(
        "deploy",
        "--checkpoint",
        checkpoint,
        "--robot",
        "sim:metaworld/reach-v3",
        "--record",
        str(out),
        "--max-episode-steps",
        "20",
    )
    with DemoStore.open(out) as store:
        assert store.num_episodes == n + 1


def test_teleop_recording_driven_by_a_virtual_keyboard(tmp_path):
    from test_teleop import start_xvfb, stop_xvfb, xdotool

    xvfb, display = start_xvfb("+extension", "RECORD")
    out = tmp_path / "teleop.zarr"
    args = [
        *IL,
        "record",
        "--robot",
        "sim:metaworld/reach-v3",
        "--teleop",
        "keyboard",
        "--camera",
        "corner",
        "--out",
        str(out),
        "--episodes",
        "1",
    ]
    proc = subprocess.Popen(
        args,
        env={**os.environ, "DISPLAY": display},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / "zarr.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # the key listener starts after the store is opened
        xdotool(display, "key", "Return")  # start an episode
        time.sleep(0.3)
        xdotool(display, "keydown", "w")  # +x while held
        time.sleep(0.6)
        xdotool(display, "keyup", "w")
        xdotool(display, "key", "space")  # close the gripper
        time.sleep(0.2)
        xdotool(display, "key", "Return")  # stop and save: the one episode asked for
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        stop_xvfb(xvfb)
    assert proc.returncode == 0, stderr
    assert "1 episodes saved" in stdout
    with DemoStore.open(out) as store:
        assert store.num_episodes == 1
        assert store.episode_meta()["source"][0] == "teleop"
        ep = store.read_episode(0)
        moved = ep["obs/ee_pos"][-1, 0] - ep["obs/ee_pos"][0, 0]
        assert moved > 0.05  # the hand went +x while w was held
        assert ep["action"][:, 0].max() > 0.5 and ep["action"][-1, 3] == 1.0
    info = run_il("info", str(out))
    assert "1 episodes" in info.stdout and "teleop 1" in info.stdout


def test_deploy_records_a_gamepad_intervention_as_such(checkpoint, tmp_path, monkeypatch):
    from test_teleop import VirtualPad, sdl_library

    from il.policies.registry import load_policy
    from robots.teleop import GamepadTeleop

    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    import pygame

    pygame.joystick.init()
    pad = VirtualPad(sdl_library(pygame))
    arm = SimArm("metaworld/reach-v3")
    safe = SafeRobot(arm, SafetyConfig.from_dict(SIM_SAFETY))
    teleop = GamepadTeleop(index=pad.index)
    calls = []

    def operator(status) -> None:
        # Runs on the loop's thread: push the left stick forward for a while, then let go.
        calls.append(status.steps)
        if len(calls) == 2:
            pad.axis(1, -1.0)  # stick up: +x
            pad.update()
        elif len(calls) == 4:
            pad.axis(1, 0.0)
            pad.update()

    try:
        with safe:
            store = DemoStore.create(tmp_path / "d.zarr", robot_schema(safe, [], {}))
            teleop.connect()
            session = Session(
                safe,
                hz=80,
                policy=load_policy(checkpoint),
                teleop=teleop,
                store=store,
                task=arm.task,
                on_status=operator,
            )
            report = session.run(episodes=1, max_steps=120)
            ep = store.read_episode(0)
            source = store.episode_meta()["source"][0]
            store.close()
    finally:
        teleop.disconnect()
        pad.detach()
        pygame.joystick.quit()
        pygame.display.quit()
    marked = ep["intervention"]
    assert 0 < marked.sum() < len(marked)  # some steps by the operator, the rest by the policy
    assert report.intervention_steps == marked.sum() and source == "intervention"
    assert (ep["action_requested"][marked, 0] > 0.9).all()  # the operator's +x
    assert not marked[0] and not marked[-1]  # the policy had it before and after


def test_a_resumed_teleop_recording_goes_on_to_new_scenes(tmp_path, monkeypatch):
    """An operator records into a store, stops, and records more into it later: the second
    session's episodes are homed with the seeds after the first's, so the simulated arm plays
    scenes the store does not hold yet instead of the same ones again."""
    from test_teleop import VirtualPad, sdl_library

    from robots.teleop import GamepadTeleop

    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    import pygame

    pygame.joystick.init()
    pad = VirtualPad(sdl_library(pygame))
    out = tmp_path / "teleop.zarr"

    def session(episodes: int) -> list[dict]:
        arm = SimArm("metaworld/reach-v3")
        safe = SafeRobot(arm, SafetyConfig.from_dict(SIM_SAFETY))
        teleop = GamepadTeleop(index=pad.index)
        with safe:
            store = DemoStore.open_or_create(out, robot_schema(safe, [], {}))
            teleop.connect()
            try:
                # episodes begin at once and end at the step limit: the operator drives
                report = Session(safe, hz=400, teleop=teleop, store=store).run(
                    episodes=episodes, max_steps=3
                )
            finally:
                teleop.disconnect()
                store.close()
        return report.episodes

    try:
        first = session(2)
        second = session(2)
    finally:
        pad.detach()
        pygame.joystick.quit()
        pygame.display.quit()
    assert [e["seed"] for e in first] == [0, 1]
    assert [e["seed"] for e in second] == [2, 3]
    with DemoStore.open(out) as store:
        meta = store.episode_meta()
        assert meta["seed"].tolist() == [0, 1, 2, 3]
        assert meta["source"].tolist() == ["teleop"] * 4
        states = store.array("obs/state")[:]
        starts = store.episode_starts
    # every episode began in its own scene (reach's goal is the state's last three numbers)
    goals = {tuple(states[s, 36:]) for s in starts}
    assert len(goals) == 4
