"""Driving a robot at a fixed rate: teleoperated recording, policy deployment, replay.

All three verbs are one loop, differing only in who chooses the action:

    observe robot + newest camera frames ─► operator / policy / recording ─► safety filter ─► arm
            │                                                                        │
            └────────────── per-step record (wall-clock stamps, overruns) ◄──────────┘

The loop owns nothing slow: frames come from camera threads, episodes go to the DemoStore
through a background writer, so saving an episode never stretches a control period, and a
`kill -9` loses at most the episode in flight (every saved one is committed atomically by
`DemoStore.add_episode`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from il.data.store import DemoStore, KeySpec, StoreSchema
from robots.base import (
    Camera,
    ConnectionLost,
    DriverError,
    Robot,
    StaleFrameError,
    Teleop,
    TeleopEvent,
    TeleopState,
    teleop_action,
)
from robots.loop import BackgroundWriter, EpisodeBuffer, RateLoop
from robots.safety import SafeRobot

__all__ = ["Session", "SessionReport", "robot_schema"]

Chooser = Callable[[dict[str, Any], TeleopState | None], tuple[np.ndarray, bool]]
"""(policy observation, teleop reading) → (action, intervened)."""


def robot_schema(
    robot: Robot | SafeRobot,
    cameras: Sequence[Camera],
    image_size: Mapping[str, tuple[int, int]],
    fps: float = 0.0,
) -> StoreSchema:
    """What a robot session stores per step: every array the robot observes (under `obs/`),
    every camera's colour image, the action sent and the one asked for, and the timing."""
    keys: dict[str, KeySpec] = {}
    for name, shape in robot.observation_shapes.items():
        keys[f"obs/{name}"] = KeySpec(tuple(shape), "float32", f"robot observation {name}")
    for cam in cameras:
        w, h = image_size[cam.name]
        keys[f"obs/image/{cam.name}"] = KeySpec((h, w, 3), "uint8", f"RGB from camera {cam.name}")
        keys[f"time/image/{cam.name}"] = KeySpec(
            (), "float64", f"capture time of the {cam.name} frame (unix seconds)"
        )
    spec = robot.action_spec
    keys["action"] = KeySpec(
        (spec.dim,), "float32", "action sent to the robot, after the safety filter"
    )
    keys["action_requested"] = KeySpec(
        (spec.dim,), "float32", "action the operator or policy asked for, before the safety filter"
    )
    keys["time/step"] = KeySpec((), "float64", "wall-clock time the step began (unix seconds)")
    keys["time/robot"] = KeySpec((), "float64", "capture time of the robot observation")
    keys["overrun"] = KeySpec((), "bool", "the step finished after its deadline")
    keys["intervention"] = KeySpec((), "bool", "the operator, not the policy, chose the action")
    keys["safety_limited"] = KeySpec((), "bool", "the safety filter changed the action")
    return StoreSchema(
        keys=keys,
        fps=fps,
        action=spec.to_json(),
        source=dict(robot.identity()),
    )


@dataclass
class SessionReport:
    """What a session did, for the closing line and the benchmark."""

    saved: int = 0
    discarded: int = 0
    steps: int = 0
    intervention_steps: int = 0
    successes: int = 0
    loop: dict[str, Any] = field(default_factory=dict)
    safety: dict[str, Any] = field(default_factory=dict)
    save_seconds: list[float] = field(default_factory=list)
    submit_seconds: list[float] = field(default_factory=list)
    stale_frames: int = 0
    episodes: list[dict[str, Any]] = field(default_factory=list)
    connection_lost: str | None = None
    """Why the session ended early: the robot stopped answering (None when it did not)."""


@dataclass
class Status:
    """The live status line: what an operator needs at a glance."""

    mode: str
    episode: int = 0
    recording: bool = False
    steps: int = 0
    seconds: float = 0.0
    hz: float = 0.0
    overruns: int = 0
    intervening: bool = False
    estopped: bool = False
    saved: int = 0
    pending: int = 0
    message: str = ""


class Session:
    """One robot, its cameras, an optional teleop device and policy, paced by a `RateLoop`.

    `robot` must be a `SafeRobot`: the session cannot send a command any other way. With a
    `store`, finished episodes are saved through a `BackgroundWriter`.
    """

    def __init__(
        self,
        robot: SafeRobot,
        *,
        hz: float,
        cameras: Sequence[Camera] = (),
        teleop: Teleop | None = None,
        policy: Any = None,
        store: DemoStore | None = None,
        task: str = "",
        instruction: str = "",
        max_frame_age: float | None = None,
        on_status: Callable[[Status], None] | None = None,
        on_disconnect: str = "keep",
    ) -> None:
        if on_disconnect not in ("keep", "discard"):
            raise ValueError(f"on_disconnect is keep or discard, not {on_disconnect!r}")
        if not isinstance(robot, SafeRobot):
            raise TypeError("Session drives robots only through a SafeRobot (the safety filter)")
        self.robot = robot
        self.cameras = list(cameras)
        self.teleop = teleop
        self.policy = policy
        self.store = store
        self.task, self.instruction = task, instruction
        self.loop = RateLoop(hz)
        # A frame may be at most two camera periods old (one late frame is tolerated).
        self.max_frame_age = max_frame_age or max(
            (2.0 / getattr(c, "fps", 30.0) for c in self.cameras), default=0.1
        )
        self.on_status = on_status or (lambda status: None)
        self.on_disconnect = on_disconnect
        self.report = SessionReport()
        self._writer = (
            BackgroundWriter(lambda arrays, **meta: store.add_episode(arrays, **meta))
            if store is not None
            else None
        )

    # --- one step ------------------------------------------------------------------------------
    def _observe(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The robot's observation and the newest frames: (record entries, policy input)."""
        obs = self.robot.observe()
        record: dict[str, Any] = {"time/robot": np.float64(obs["timestamp"])}
        policy_obs: dict[str, Any] = {}
        for key in self.robot.observation_shapes:
            value = np.asarray(obs[key], dtype=np.float32)
            record[f"obs/{key}"] = value
            policy_obs[key] = value
        for cam in self.cameras:
            frame = cam.read_latest(self.max_frame_age)
            record[f"obs/image/{cam.name}"] = frame.color
            record[f"time/image/{cam.name}"] = np.float64(frame.timestamp)
            policy_obs[f"image/{cam.name}"] = frame.color
        return record, policy_obs

    # --- episodes ------------------------------------------------------------------------------
    def _begin_episode(self, seed: int | None) -> dict[str, Any]:
        used = self.robot.home(seed)
        self._reset_policy()
        return {"seed": -1 if used is None else used, "success": False, "intervened": False}

    def _reset_policy(self) -> None:
        """A fresh history and action queue; task-conditioned policies are told the task."""
        if self.policy is not None:
            tasks = getattr(getattr(self.policy, "spec", None), "tasks", None)
            self.policy.reset(task=self.task if tasks else None)

    def _end_episode(
        self, buffer: EpisodeBuffer, episode: dict[str, Any], save: bool, steps: int
    ) -> None:
        if save and steps > 0 and self._writer is not None:
            if self.policy is None:
                source = "teleop"
            else:
                source = "intervention" if episode["intervened"] else "policy"
            self._writer.submit(
                buffer.stack(),
                {
                    "task": self.task,
                    "instruction": self.instruction,
                    "success": episode["success"],
                    "seed": episode["seed"],
                    "source": source,
                },
            )
        if save and steps > 0:
            self.report.saved += 1
            self.report.successes += bool(episode["success"])
        else:
            self.report.discarded += steps > 0
        self.report.episodes.append({**episode, "steps": steps, "saved": save and steps > 0})
        buffer.clear()

    # --- the loop ------------------------------------------------------------------------------
    def run(
        self,
        *,
        episodes: int | None = None,
        max_steps: int = 100_000,
        steps_after_success: int | None = None,
        wait_for_start: bool = False,
        replay: Sequence[tuple[np.ndarray, int | None]] | None = None,
    ) -> SessionReport:
        """Run until `episodes` episodes are saved, the operator quits, or (replay) the given
        episodes are played. An episode ends when the operator stops or discards it, after
        `max_steps` steps, or `steps_after_success` steps after the robot reports success.
        With `wait_for_start`, every episode waits for the operator's start event (the arm
        holds meanwhile); otherwise each begins at once."""
        mode = "replay" if replay is not None else "deploy" if self.policy is not None else "teleop"
        if replay is not None:
            episodes = len(replay)
        if mode == "teleop" and self.teleop is None:
            raise ValueError("a teleop session needs a teleop device")
        spec = self.robot.action_spec
        buffer = EpisodeBuffer()
        status = Status(mode=mode)
        episode: dict[str, Any] | None = None
        toggled = was_intervening = False
        step_in_episode = 0
        success_at: int | None = None
        stale_since: float | None = None
        last_status = 0.0

        def begin() -> None:
            nonlocal episode, step_in_episode, success_at, toggled
            index = len(self.report.episodes)
            seed = replay[index][1] if replay is not None else None
            episode = {**self._begin_episode(seed), "mode": mode, "index": index}
            step_in_episode, success_at, toggled = 0, None, False

        def end(save: bool) -> None:
            nonlocal episode
            assert episode is not None
            self._end_episode(buffer, episode, save, step_in_episode)
            episode = None

        if not wait_for_start:
            begin()
        # Camera and writer threads hold the GIL for up to the switch interval (5 ms by default)
        # before the loop thread gets it back: a tenth of that keeps the loop on time.
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(switch_interval, 5e-4))
        self.loop.start()
        try:
            while True:
                tick = self.loop.tick
                reading = self.teleop.read() if self.teleop is not None else None
                finish: str | None = None
                quit_session = False
                for event in reading.events if reading is not None else ():
                    if event is TeleopEvent.ESTOP:
                        self.robot.estop()
                    elif event is TeleopEvent.RESET:
                        self.robot.reset_estop()
                    elif event is TeleopEvent.QUIT:
                        quit_session = True
                    elif event is TeleopEvent.START and episode is None:
                        begin()
                    elif event is TeleopEvent.STOP and episode is not None:
                        finish = "save"
                    elif event is TeleopEvent.DISCARD and episode is not None:
                        finish = "discard"
                    elif event is TeleopEvent.SUCCESS and episode is not None:
                        episode["success"] = True
                    elif event is TeleopEvent.INTERVENE:
                        toggled = not toggled
                if quit_session:
                    if episode is not None:
                        end(save=mode != "teleop" and step_in_episode > 0)
                    break
                if finish is not None:
                    end(save=finish == "save")
                    if episodes is not None and self.report.saved >= episodes:
                        break
                    if not wait_for_start:
                        begin()

                try:
                    record, policy_obs = self._observe()
                    stale_since = None
                except StaleFrameError:
                    # No current picture: hold rather than act on an old one, and say so
                    # if it lasts.
                    self.report.stale_frames += 1
                    stale_since = stale_since or tick.mono_time
                    if tick.mono_time - stale_since > 1.0:
                        raise
                    self.robot.command(self.robot.hold())
                    self.loop.wait()
                    continue

                intervened = False
                if episode is None:
                    action = self.robot.hold()
                elif replay is not None:
                    actions = replay[episode["index"]][0]
                    action = actions[step_in_episode]
                elif self.policy is not None:
                    intervened = toggled or bool(reading is not None and reading.active)
                    if was_intervening and not intervened:
                        # Handing back: the policy's history predates the operator's moves.
                        self._reset_policy()
                    if intervened:
                        assert reading is not None
                        action = teleop_action(reading, spec)
                    else:
                        action = np.asarray(self.policy.act(policy_obs), dtype=np.float64)
                    was_intervening = intervened
                else:
                    assert reading is not None
                    action = teleop_action(reading, spec)

                sent = self.robot.command(action)
                result = self.robot.last_result
                if episode is not None:
                    self.report.steps += 1
                    self.report.intervention_steps += intervened
                    episode["intervened"] = episode["intervened"] or intervened
                    if "obs/success" in record and record["obs/success"][0] > 0.5:
                        episode["success"] = True
                        success_at = step_in_episode if success_at is None else success_at
                    step = {
                        **record,
                        "action": np.asarray(sent, dtype=np.float32),
                        "action_requested": np.asarray(action, dtype=np.float32),
                        "time/step": np.float64(tick.wall_time),
                        "intervention": np.bool_(intervened),
                        "safety_limited": np.bool_(bool(result is not None and result.reasons)),
                    }
                    step_in_episode += 1

                overran = self.loop.wait()
                if episode is not None:
                    if self._writer is not None:
                        buffer.append({**step, "overrun": np.bool_(overran)})
                    done = step_in_episode >= max_steps or (
                        replay is not None and step_in_episode >= len(replay[episode["index"]][0])
                    )
                    if success_at is not None and steps_after_success is not None:
                        done = done or step_in_episode - success_at > steps_after_success
                    if done:
                        end(save=True)
                        if episodes is not None and self.report.saved >= episodes:
                            break
                        if not wait_for_start:
                            begin()

                now = tick.mono_time
                if now - last_status > 0.2:
                    last_status = now
                    self._update_status(status, episode, step_in_episode, intervened)
        except KeyboardInterrupt:
            pass  # the episode in flight is dropped; saved ones are drained below
        except ConnectionLost as e:
            # The arm is gone: nothing more can be sent. What was recorded up to the last
            # step is whole, so it is kept (marked unsuccessful) or dropped as the user chose.
            self.report.connection_lost = str(e)
            if episode is not None:
                end(save=self.on_disconnect == "keep" and step_in_episode > 0)
        finally:
            sys.setswitchinterval(switch_interval)
            try:
                if self.report.connection_lost is None:
                    self.robot.command(self.robot.hold())
            except DriverError:
                pass  # the link broke while stopping; the driver's own stop applies
            finally:
                self._close_writer()
        return self.report

    def _update_status(
        self, status: Status, episode: dict[str, Any] | None, steps: int, intervening: bool
    ) -> None:
        stats = self.loop.stats
        status.episode = len(self.report.episodes) + (episode is not None)
        status.recording = episode is not None
        status.steps = steps
        status.seconds = steps / self.loop.hz
        recent = stats.mono_times[-50:]
        status.hz = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 else 0.0
        status.overruns = stats.overruns
        status.intervening = intervening
        status.estopped = self.robot.estopped
        status.saved = self.report.saved
        status.pending = self._writer.pending if self._writer is not None else 0
        self.on_status(status)

    def _close_writer(self) -> None:
        self.report.loop = self.loop.stats.summary()
        self.report.safety = self.robot.stats()
        if self._writer is not None:
            self._writer.close()
            self.report.save_seconds = list(self._writer.save_seconds)
            self.report.submit_seconds = list(self._writer.submit_seconds)
