"""Driving a robot at a fixed rate: teleoperated recording, policy deployment, replay.

All three verbs are one loop, differing only in who chooses the action, the loop's
`ActionSource` (il/sources.py: an operator, a policy, a policy an operator can take over from,
or a recording):

    observe robot + newest camera frames ─► action source ─► safety filter ─► arm
            │                                                                │
            └──────────── per-step record (wall-clock stamps, overruns) ◄────┘

`Session` keeps what every source shares: the operator's episode events (start, stop, discard,
success, e-stop, quit), holding while a camera's frame is stale, the pace, saving, a lost
connection and the status line; it asks the source for each action and never which source it
has. `il/rig.py` builds a session from the names a user gives the CLI.

The loop owns nothing slow: frames come from camera threads, episodes go to the DemoStore
through a background writer, so saving an episode never stretches a control period, and a
`kill -9` loses at most the episode in flight (every saved one is committed atomically by
`DemoStore.add_episode`). The writer also labels each episode with language motions, at the
robot's scale, where the robot records its hand (`il.data.motion_labels`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from envs.camera import CameraModel
from envs.tracks import (
    GRASP_KEY,
    TRACKS_ATTR,
    camera_attrs,
    cameras_from_attrs,
    project_keypoints,
    track_key,
    track_keys,
)
from il.data.motion_labels import episode_labeller, robot_labelling, with_labels
from il.data.store import DemoStore, KeySpec, StoreSchema
from il.sources import ActingPolicy, ActionSource, InterventionSource, PolicySource, TeleopSource
from robots.base import (
    ActionSpec,
    Camera,
    ConnectionLost,
    DriverError,
    Robot,
    StaleFrameError,
    Teleop,
    TeleopEvent,
    TeleopState,
)
from robots.loop import BackgroundWriter, EpisodeBuffer, RateLoop
from robots.safety import SafeRobot

__all__ = ["Session", "SessionReport", "robot_schema"]


def robot_schema(
    robot: Robot | SafeRobot,
    cameras: Sequence[Camera],
    image_size: Mapping[str, tuple[int, int]],
    fps: float = 0.0,
) -> StoreSchema:
    """What a robot session stores per step: every array the robot observes (under `obs/`),
    every camera's colour image, the action sent and the one asked for, the timing, and the
    language-motion label where the robot's hand can be labelled (the attributes say how, or
    why not: `il.data.motion_labels.robot_labelling`, at `fps`, else the robot's own rate)."""
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
    source = dict(robot.identity())
    tracked = tracked_cameras(robot, cameras)
    for name, (shape, dtype, description) in track_keys(tracked, SESSION_GRASP).items():
        keys[name] = KeySpec(shape, dtype, description)
    if tracked:
        source[TRACKS_ATTR] = camera_attrs(tracked, SESSION_GRASP)
    schema = StoreSchema(keys=keys, fps=fps, action=spec.to_json(), source=source)
    labelling = robot_labelling(keys, schema.action, schema.source, fps or robot.fps)
    return with_labels(schema, labelling)


SESSION_GRASP = "the gripper command of the step before above 0 (closing)"
"""How a robot session reads its grasp bit."""


def tracked_cameras(robot: Robot | SafeRobot, cameras: Sequence[Camera]) -> list[CameraModel]:
    """The models of the two cameras a session records motion tracks in: the first two with
    a known pose (`Camera.extrinsics`), where the robot reports its gripper's points and has a
    gripper in its action; none otherwise."""
    if "gripper_points" not in robot.observation_shapes:
        return []
    if "gripper" not in robot.action_spec.names:
        return []
    models = []
    for camera in cameras:
        pose = camera.extrinsics
        if pose is None:
            continue
        k = camera.intrinsics
        models.append(CameraModel(camera.name, k.width, k.height, k.matrix(), *pose))
    return models[:2] if len(models) >= 2 else []


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
    from_source: dict[str, Any] = field(default_factory=dict)
    """What the action source counted (`ActionSource.summary`: a person's corrections)."""

    def lost_connection_message(self) -> str | None:
        """The one line a user sees when the robot stopped answering: why, and what became of
        the episode in flight (None when the connection held)."""
        if self.connection_lost is None:
            return None
        last = self.episodes[-1] if self.episodes else None
        fate = (
            ""
            if last is None or not last["steps"]
            else f"; the episode in flight ({last['steps']} steps) was "
            + ("kept" if last["saved"] else "discarded")
        )
        return f"{self.connection_lost}{fate}"


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

    def line(self) -> str:
        """One line, redrawn in place while the session runs."""
        state = (
            "E-STOP (reset to continue)"
            if self.estopped
            else ("recording" if self.recording else "waiting for start")
            if self.mode == "teleop"
            else self.mode
        )
        return (
            f"episode {self.episode} | {state} | {self.seconds:5.1f} s | "
            f"{self.hz:5.1f} Hz | overruns {self.overruns} | saved {self.saved}"
            + (f" (+{self.pending} saving)" if self.pending else "")
            + (" | OPERATOR" if self.intervening else "")
            + (f" | {self.message}" if self.message else "")
        )


@dataclass
class _Episode:
    """The episode in flight, as the report and the store's metadata describe it."""

    index: int
    mode: str
    seed: int
    success: bool = False
    intervened: bool = False
    steps: int = 0
    success_at: int | None = None
    """The step at which the robot first reported success."""
    last_grip: float = -1.0
    """The gripper command of the step before (the grasp bit of the next): open at the start."""

    def summary(self, saved: bool) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "success": self.success,
            "intervened": self.intervened,
            "mode": self.mode,
            "index": self.index,
            "steps": self.steps,
            "saved": saved,
        }


class Session:
    """One robot, its cameras, an optional teleop device, and the source of its actions, paced
    by a `RateLoop`.

    `robot` must be a `SafeRobot`: the session cannot send a command any other way. Without a
    `source`, the session's arguments pick one: a `policy` acts (and the operator can take over
    when there is a `teleop` device), else the operator drives. With a `store`, finished
    episodes are saved through a `BackgroundWriter`.
    """

    def __init__(
        self,
        robot: SafeRobot,
        *,
        hz: float,
        cameras: Sequence[Camera] = (),
        teleop: Teleop | None = None,
        policy: ActingPolicy | None = None,
        source: ActionSource | None = None,
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
        if source is not None and policy is not None:
            raise ValueError("give a Session its policy or its source, not both")
        self.robot = robot
        self.cameras = list(cameras)
        self.teleop = teleop
        self.source = source or _source_for(robot.action_spec, policy, teleop, task)
        if isinstance(self.source, PolicySource) and not self.source.task:
            self.source.task = task  # a policy acts for the robot's task unless told another
        if self.source.needs_teleop and teleop is None:
            raise ValueError(f"a {self.source.mode} session needs a teleop device")
        if store is not None:
            self.source.recording_into(store)
        self._stored = set(store.schema.keys) if store is not None else None
        self._tracked = tracked_cameras(robot, self.cameras) if store is not None else []
        if store is not None:
            _check_track_cameras(store, self._tracked)
            if not any(k.startswith("track/") for k in store.schema.keys):
                self._tracked = []  # a store recorded without tracks goes on without
        self._gripper_dim = (
            list(robot.action_spec.names).index("gripper")
            if "gripper" in robot.action_spec.names
            else None
        )
        if self.source.takes_text and teleop is not None:
            teleop.enable_typing()
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
        self._writer = BackgroundWriter(_saver(store)) if store is not None else None
        self._buffer = EpisodeBuffer()
        self._resume_seed = _seed_after(store)
        self._episode: _Episode | None = None
        self._last: _Episode | None = None
        """The episode in flight, else the one before: what the status line shows."""

    # --- one step ------------------------------------------------------------------------------
    def _observe(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The newest frames and the robot's observation: (record entries, policy input).

        The cameras are read first: a frame that arrives while the robot answers would otherwise
        be stored with a state older than itself, and on a loaded machine that wait is long."""
        frames = {cam.name: cam.read_latest(self.max_frame_age) for cam in self.cameras}
        obs = self.robot.observe()
        record: dict[str, Any] = {"time/robot": np.float64(obs["timestamp"])}
        policy_obs: dict[str, Any] = {}
        for key in self.robot.observation_shapes:
            value = np.asarray(obs[key], dtype=np.float32)
            if self._stored is None or f"obs/{key}" in self._stored:
                record[f"obs/{key}"] = value  # a store from before a key was added goes on
            policy_obs[key] = value
        for name, frame in frames.items():
            record[f"obs/image/{name}"] = frame.color
            record[f"time/image/{name}"] = np.float64(frame.timestamp)
            policy_obs[f"image/{name}"] = frame.color
        return record, policy_obs

    def _handle_events(self, reading: TeleopState | None) -> tuple[str | None, bool]:
        """Act on the operator's events in order: (how the episode in flight ends, if it does:
        "save" or "discard"; whether to quit). Those the loop has no use for go to the
        source."""
        finish: str | None = None
        quit_session = False
        for event in reading.events if reading is not None else ():
            if event is TeleopEvent.ESTOP:
                self.robot.estop()
            elif event is TeleopEvent.RESET:
                self.robot.reset_estop()
            elif event is TeleopEvent.QUIT:
                quit_session = True
            elif event is TeleopEvent.START:
                if self._episode is None:
                    self._begin()
            elif event is TeleopEvent.STOP:
                if self._episode is not None:
                    finish = "save"
            elif event is TeleopEvent.DISCARD:
                if self._episode is not None:
                    finish = "discard"
            elif event is TeleopEvent.SUCCESS:
                if self._episode is not None:
                    self._episode.success = True
            else:
                self.source.on_event(event)
        return finish, quit_session

    def _record(
        self,
        episode: _Episode,
        record: dict[str, Any],
        asked: np.ndarray,
        sent: np.ndarray,
        intervened: bool,
        wall_time: float,
    ) -> dict[str, Any]:
        """Count a step of `episode` and return what the store keeps of it (less its overrun,
        known only once the step's time is up)."""
        result = self.robot.last_result
        self.report.steps += 1
        self.report.intervention_steps += intervened
        episode.intervened = episode.intervened or intervened
        if "obs/success" in record and record["obs/success"][0] > 0.5:
            episode.success = True
            episode.success_at = episode.steps if episode.success_at is None else episode.success_at
        episode.steps += 1
        tracks: dict[str, Any] = {}
        if self._tracked and "obs/gripper_points" in record:
            pixels = project_keypoints(self._tracked, record["obs/gripper_points"])
            for camera, uv in zip(self._tracked, pixels, strict=True):
                tracks[track_key(camera.name)] = uv.astype(np.float32)
            tracks[GRASP_KEY] = np.bool_(episode.last_grip > 0)
        if self._gripper_dim is not None:
            episode.last_grip = float(sent[self._gripper_dim])
        return {
            **record,
            **tracks,
            "action": np.asarray(sent, dtype=np.float32),
            "action_requested": np.asarray(asked, dtype=np.float32),
            "time/step": np.float64(wall_time),
            "intervention": np.bool_(intervened),
            "safety_limited": np.bool_(bool(result is not None and result.reasons)),
            **self.source.step_entries(),
        }

    # --- episodes ------------------------------------------------------------------------------
    def _begin(self) -> None:
        index = len(self.report.episodes)
        seed = self.source.begin_episode(index)
        if seed is None and self._resume_seed is not None:
            seed = self._resume_seed + index
        used = self.robot.home(seed)
        self._episode = self._last = _Episode(
            index=index, mode=self.source.mode, seed=-1 if used is None else used
        )

    def _end(self, save: bool) -> None:
        episode, self._episode = self._episode, None
        assert episode is not None
        kept = save and episode.steps > 0
        if kept and self._writer is not None:
            self._writer.submit(
                self._buffer.stack(),
                {
                    "task": self.task,
                    "instruction": self.instruction,
                    "success": episode.success,
                    "seed": episode.seed,
                    "source": self.source.label(),
                    "store_source": self.source.store_attributes(),
                },
            )
        if kept:
            self.report.saved += 1
            self.report.successes += bool(episode.success)
        else:
            self.report.discarded += episode.steps > 0
        self.report.episodes.append(episode.summary(kept))
        self._buffer.clear()

    def _over(self, episode: _Episode, max_steps: int, steps_after_success: int | None) -> bool:
        """Whether `episode` ends after its latest step: the step limit, the source ran out, or
        it went on long enough after the robot reported success."""
        done = episode.steps >= max_steps or self.source.episode_over()
        if episode.success_at is not None and steps_after_success is not None:
            done = done or episode.steps - episode.success_at > steps_after_success
        return done

    # --- the loop ------------------------------------------------------------------------------
    def run(
        self,
        *,
        episodes: int | None = None,
        max_steps: int = 100_000,
        steps_after_success: int | None = None,
        wait_for_start: bool = False,
    ) -> SessionReport:
        """Run until `episodes` episodes are saved (a recording: all it holds), or the operator
        quits. An episode ends when the operator stops or discards it, after `max_steps` steps,
        when the source runs out, or `steps_after_success` steps after the robot reports
        success. With `wait_for_start`, every episode waits for the operator's start event (the
        arm holds meanwhile); otherwise each begins at once."""
        if self.source.episodes is not None:
            episodes = self.source.episodes
        status = Status(mode=self.source.mode)
        stale_since: float | None = None
        last_status = 0.0

        def next_episode() -> bool:
            """After an episode ended: begin the next unless the session is done."""
            if episodes is not None and self.report.saved >= episodes:
                return False
            if not wait_for_start:
                self._begin()
            return True

        if not wait_for_start:
            self._begin()
        # Camera and writer threads hold the GIL for up to the switch interval (5 ms by default)
        # before the loop thread gets it back: a tenth of that keeps the loop on time.
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(switch_interval, 5e-4))
        self.loop.start()
        try:
            while True:
                tick = self.loop.tick
                reading = self.teleop.read() if self.teleop is not None else None
                finish, quit_session = self._handle_events(reading)
                if quit_session:
                    if self._episode is not None:
                        self._end(save=self.source.keep_on_quit and self._episode.steps > 0)
                    break
                if finish is not None:
                    self._end(save=finish == "save")
                    if not next_episode():
                        break

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

                episode = self._episode
                if episode is None:
                    action, intervened = self.robot.hold(), False
                else:
                    action, intervened = self.source.act(policy_obs, reading)
                sent = self.robot.command(action)
                if episode is not None:
                    step = self._record(episode, record, action, sent, intervened, tick.wall_time)

                overran = self.loop.wait()
                if episode is not None:
                    if self._writer is not None:
                        self._buffer.append({**step, "overrun": np.bool_(overran)})
                    if self._over(episode, max_steps, steps_after_success):
                        self._end(save=True)
                        if not next_episode():
                            break

                now = tick.mono_time
                if now - last_status > 0.2:
                    last_status = now
                    self._update_status(status, intervened)
        except KeyboardInterrupt:
            pass  # the episode in flight is dropped; saved ones are drained below
        except ConnectionLost as e:
            # The arm is gone: nothing more can be sent. What was recorded up to the last
            # step is whole, so it is kept (marked unsuccessful) or dropped as the user chose.
            self.report.connection_lost = str(e)
            if self._episode is not None:
                self._end(save=self.on_disconnect == "keep" and self._episode.steps > 0)
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

    def _update_status(self, status: Status, intervening: bool) -> None:
        stats = self.loop.stats
        steps = self._last.steps if self._last is not None else 0
        status.episode = len(self.report.episodes) + (self._episode is not None)
        status.recording = self._episode is not None
        status.steps = steps
        status.seconds = steps / self.loop.hz
        recent = stats.mono_times[-50:]
        status.hz = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 else 0.0
        status.overruns = stats.overruns
        status.intervening = intervening
        status.estopped = self.robot.estopped
        status.saved = self.report.saved
        status.pending = self._writer.pending if self._writer is not None else 0
        status.message = self.source.status()
        self.on_status(status)

    def _close_writer(self) -> None:
        self.report.loop = self.loop.stats.summary()
        self.report.safety = self.robot.stats()
        self.report.from_source = self.source.summary()
        if self._writer is not None:
            self._writer.close()
            self.report.save_seconds = list(self._writer.save_seconds)
            self.report.submit_seconds = list(self._writer.submit_seconds)


def _check_track_cameras(store: DemoStore, tracked: Sequence[CameraModel]) -> None:
    """A store's tracks are in one set of camera models: resuming with cameras that moved (or
    were calibrated again) would mix two, so it is refused in one line."""
    stored = store.schema.source.get(TRACKS_ATTR)
    has_keys = any(k.startswith("track/") for k in store.schema.keys)
    if not has_keys:
        return  # the store records no tracks: the session adds none
    now = {c.name: c for c in tracked}
    for camera in cameras_from_attrs(stored) if isinstance(stored, dict) else []:
        same = now.get(camera.name)
        if same is None or not (
            np.allclose(same.K, camera.K, atol=1e-6)
            and np.allclose(same.R, camera.R, atol=1e-6)
            and np.allclose(same.t, camera.t, atol=1e-6)
        ):
            raise ValueError(
                f"{store.path} holds motion tracks in camera {camera.name} as it was calibrated "
                "then; this session's cameras differ: record into a new store"
            )


def _saver(store: DemoStore) -> Callable[..., Any]:
    """What the background writer does with a finished episode: label it as the store says
    (off the control loop), write the `source` attributes it needs (`store_source`: phrases
    its corrections index) and commit it."""
    label = episode_labeller(store.schema)

    def save(
        arrays: dict[str, np.ndarray], *, store_source: Mapping[str, Any] | None = None, **meta: Any
    ) -> Any:
        changed = {k: v for k, v in (store_source or {}).items() if store.schema.source.get(k) != v}
        if changed:
            store.update_source(changed)
        return store.add_episode(label(arrays) if label is not None else arrays, **meta)

    return save


def _seed_after(store: DemoStore | None) -> int | None:
    """The seed a session resumed into `store` starts from: one after the highest seed its
    episodes were homed with, so that a simulated robot goes on to scenes the store does not
    hold yet instead of starting over at its first. None for a new store, or one whose robot
    takes no seeds (a real arm), where the robot picks its own."""
    if store is None or store.num_episodes == 0:
        return None
    seeds = store.episode_meta()["seed"]
    return int(seeds.max()) + 1 if (seeds >= 0).any() else None


def _source_for(
    spec: ActionSpec, policy: ActingPolicy | None, teleop: Teleop | None, task: str
) -> ActionSource:
    """The source a session given no `source` uses: its policy, which the operator can take
    over from when there is a teleop device; without a policy, the operator."""
    if policy is None:
        return TeleopSource(spec)
    if teleop is not None:
        return InterventionSource(policy, spec, task=task)
    return PolicySource(policy, task=task)
