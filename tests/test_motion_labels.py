"""Language-motion labels as every recorder stores them: the scripted expert, an operator with a
gamepad on the simulated arm, a UR through ur-rtde against the emulated controller; what `il
info` says about them; `il relabel` with other thresholds, on a store recorded without labels,
and interrupted by a full disk at each of its writes. Real MuJoCo, real zarr on disk."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from test_integrity import full_disk, one_line

import envs
from envs.language_motion import (
    ABS_THRESHOLD,
    VOCABULARY,
    WINDOW,
    MotionLabelling,
    floor_for,
    label_episode,
    label_steps,
    window_for,
)
from il.data.integrity import find_damage
from il.data.motion_labels import KEY, LABELS_ATTR, VOCABULARY_ATTR
from il.data.store import DemoStore, StoreSchema
from il.record import record_expert
from il.rig import make_rig
from il.session import Session, robot_schema
from il.sources import ReplaySource
from robots.registry import make_robot
from robots.safety import SafeRobot, SafetyConfig

FORWARD, UP, CLOSE, STOP = (
    VOCABULARY.index(p) for p in ("move forward", "move up", "close gripper", "stop")
)


@pytest.fixture
def il(monkeypatch, capsys) -> Callable[..., tuple[int, str, str]]:
    """`il ARGS` in this process, so a disk failure injected here reaches it: exit status,
    stdout, stderr."""
    from il.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["il", *args])
        with pytest.raises(SystemExit) as stopped:
            main()
        out, err = capsys.readouterr()
        return stopped.value.code or 0, out, err

    return run


def labels_of(path: Path | str) -> np.ndarray:
    with DemoStore.open(path) as store:
        return np.asarray(store.array(KEY)[: store.num_steps])


def assert_labelled_as_recorded(path: Path | str) -> MotionLabelling:
    """Every episode's stored labels are what its stored data gives with the stored settings,
    and every episode reads back as recorded."""
    with DemoStore.open(path) as store:
        source = store.schema.source
        assert source[VOCABULARY_ATTR] == list(VOCABULARY)
        labelling = MotionLabelling.from_json(source[LABELS_ATTR])
        assert store.rewriting is None
        for ep in store.episodes():
            steps = store.read_episode(ep.index, [KEY, *labelling.keys])
            np.testing.assert_array_equal(steps[KEY], label_steps(steps, labelling))
        assert find_damage(store) == []
        sums = store.checksums()
        assert sums is not None and (sums[KEY] != -1).all()
    return labelling


def verified(il, path: Path | str) -> str:
    code, out, err = il("info", str(path), "--verify")
    assert code == 0, out + err
    assert "matched their checksums" in out
    return out


# --------------------------------------------------------------------------- the labeller
@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(*[st.floats(-0.02, 0.02)] * 3, st.floats(0, 1)), min_size=1, max_size=40),
    st.integers(1, 8),
)
def test_label_steps_is_label_episode_on_a_stored_episode(rows, window):
    arr = np.asarray(rows, dtype=np.float32)
    hand = np.cumsum(arr[:, :3], axis=0)
    labelling = MotionLabelling(hand="hand", gripper="state", gripper_column=1, window=window)
    steps = {"hand": hand, "state": np.stack([np.zeros(len(arr)), arr[:, 3]], axis=1)}
    want = [VOCABULARY.index(p) for p in label_episode(hand, arr[:, 3], window)]
    assert label_steps(steps, labelling).tolist() == want


def test_an_action_labels_the_motion_it_commands():
    # ee deltas in cm: 5 steps forward, 5 up, then the gripper closes and nothing moves
    action = np.zeros((15, 4))
    action[:5, 1], action[5:10, 2], action[:, 3] = 1.0, 1.0, -1.0
    action[10:, 3] = 1.0
    labelling = MotionLabelling(
        hand="action", hand_is_action=True, hand_scale=0.01, gripper="action",
        gripper_column=3, gripper_signal="command", window=1,
    )  # fmt: skip
    labels = label_steps({"action": action}, labelling).tolist()
    assert labels == [FORWARD] * 5 + [UP] * 5 + [CLOSE] + [STOP] * 4
    action[7, 1] = np.nan  # a step no phrase describes is -1, the others keep theirs
    assert label_steps({"action": action}, labelling)[7] == -1


def test_thresholds_follow_the_arms_scale():
    assert floor_for(0.01) == pytest.approx(ABS_THRESHOLD)  # Meta-World's own
    assert window_for(80) == WINDOW and window_for(125) == 6 and window_for(0) == WINDOW
    with pytest.raises(ValueError, match="rel_threshold"):
        MotionLabelling(hand="h", rel_threshold=1.0)
    with pytest.raises(ValueError, match="abs_threshold"):
        MotionLabelling(hand="h", abs_threshold=float("nan"))


# --------------------------------------------------------------------------- recorders
def test_an_expert_recording_stores_its_labels_and_how_they_were_made(store_path):
    labelling = assert_labelled_as_recorded(store_path)
    assert labelling == envs.family_of("metaworld").motion_labels
    with DemoStore.open(store_path) as store:
        ep = store.read_episode(0)
    phrases = label_episode(ep["procedure/hand"], ep["obs/state"][:, 3])
    assert [VOCABULARY[i] for i in ep[KEY]] == phrases


def test_a_resumed_expert_recording_labels_as_the_store_was_relabelled(tmp_path, il):
    out = tmp_path / "reach.zarr"
    suite = envs.suite("metaworld/reach-v3")
    record_expert(suite, str(out), episodes_per_task=1)
    assert il("relabel", str(out), "--rel-threshold", "0.9", "--window", "1")[0] == 0
    record_expert(suite, str(out), episodes_per_task=3, workers=1)
    labelling = assert_labelled_as_recorded(out)
    assert (labelling.rel_threshold, labelling.window) == (0.9, 1)
    with DemoStore.open(out) as store:
        assert store.num_episodes == 3


def test_a_gamepad_teleop_recording_on_the_simulated_arm(tmp_path, monkeypatch):
    from test_teleop import VirtualPad, sdl_library

    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    import pygame

    pygame.joystick.init()
    pad = VirtualPad(sdl_library(pygame))
    device = tmp_path / "pad.yaml"
    device.write_text(yaml.safe_dump({"device": "gamepad", "index": pad.index}))
    calls = []

    def operator(status) -> None:
        # On the loop's thread: stick left (+y, forward) for a while, let go, close the gripper.
        calls.append(status.steps)
        if len(calls) == 2:
            pad.axis(0, -1.0)
            pad.update()
        elif len(calls) == 5:
            pad.axis(0, 0.0)
            pad.tap(0)

    out = tmp_path / "teleop.zarr"
    try:
        rig = make_rig("sim:metaworld/reach-v3", teleop=str(device), hz=80)
        rig.run(out=str(out), episodes=1, max_steps=160, on_status=operator)
    finally:
        pad.detach()
        pygame.joystick.quit()
        pygame.display.quit()
    labelling = assert_labelled_as_recorded(out)
    # the Meta-World arm at its own rate is labelled at Meta-World's scale
    assert labelling.window == WINDOW and labelling.abs_threshold == pytest.approx(ABS_THRESHOLD)
    assert (labelling.hand, labelling.gripper) == ("obs/ee_pos", "action")
    labels = labels_of(out).tolist()
    assert labels.index(FORWARD) < labels.index(CLOSE)
    with DemoStore.open(out) as store:
        assert store.episode_meta()["source"][0] == "teleop"


def test_a_ur_recording_is_labelled_at_the_ur_scale(tmp_path):
    pytest.importorskip("rtde_control")
    from robots.emulators.ur_controller import URControllerEmulator

    # m per step at 125 Hz: slowly forward (6 cm/s, a "stop" at Meta-World's floor), briskly
    # up, then the gripper closes and the arm holds
    action = np.zeros((75, 7))
    action[:, 6] = -1.0
    action[:30, 1], action[30:55, 2], action[55:, 6] = 0.0005, 0.002, 1.0
    setup = yaml.safe_load((Path(__file__).parents[1] / "configs/robots/ur5e.yaml").read_text())
    out = tmp_path / "ur.zarr"
    with URControllerEmulator() as controller:
        setup["robot"] = f"ur:{controller.host}"
        (tmp_path / "ur.yaml").write_text(yaml.safe_dump(setup))
        make_rig(str(tmp_path / "ur.yaml")).run(ReplaySource([(action, None)]), out=str(out))
    labelling = assert_labelled_as_recorded(out)
    # a tenth of the 2 mm per step the safety limits allow at 125 Hz, 50 ms ahead
    assert labelling.abs_threshold == pytest.approx(0.0002) and labelling.window == 6
    labels = labels_of(out)
    assert (labels[:24] == FORWARD).all() and (labels[31:49] == UP).all()
    assert CLOSE in labels[49:56] and labels[-1] == STOP
    with DemoStore.open(out) as store:
        ep = store.read_episode(0)
    meta_world = label_steps(ep, labelling.replace(abs_threshold=ABS_THRESHOLD, window=WINDOW))
    assert (meta_world[:24] == STOP).all()  # Meta-World's floor would call it standing still


def test_a_servo_arm_store_says_why_it_has_no_labels(tmp_path, il):
    arm = make_robot(f"dynamixel:{tmp_path / 'ttyUSB0'}")  # never connected
    schema = robot_schema(SafeRobot(arm, SafetyConfig(max_speed=1.0)), [], {}, 30.0)
    assert KEY not in schema.keys
    why = schema.source[LABELS_ATTR]["unlabelled"]
    assert "obs/ee_pos" in why and "kinematics" in why
    DemoStore.create(tmp_path / "koch.zarr", schema).close()
    code, out, _ = il("info", str(tmp_path / "koch.zarr"))
    assert code == 0 and f"language motion: none ({why})" in " ".join(out.split())
    line = one_line(il("relabel", str(tmp_path / "koch.zarr")))
    assert "cannot be labelled with language motions" in line and "kinematics" in line


# --------------------------------------------------------------------------- il info
def test_info_shows_the_label_statistics(store_path, il):
    code, out, _ = il("info", store_path, "--json")
    assert code == 0
    labels = json.loads(out)["language_motion"]
    stored = labels_of(store_path)
    counts = np.bincount(stored, minlength=len(VOCABULARY))
    assert labels["labelled_steps"] == labels["steps"] == len(stored)
    assert labels["labelled_episodes"] == labels["episodes"] == 8
    assert labels["phrases_used"] == (counts > 0).sum() and labels["vocabulary_size"] == 29
    top = labels["most_frequent"][0]
    assert top["phrase"] == VOCABULARY[counts.argmax()]
    assert top["share"] == pytest.approx(counts.max() / len(stored))
    assert labels["labelling"]["abs_threshold"] == ABS_THRESHOLD
    text = " ".join(il("info", store_path)[1].split())
    assert f"language motion: {len(stored)} of {len(stored)} steps labelled (8 of 8 episodes)" in (
        text
    )
    assert f"{labels['phrases_used']} of 29 phrases used" in text
    assert f"most frequent: {top['phrase']} {100 * top['share']:.1f}%" in text
    assert "0.3 of the largest and 0.001 m/step" in text and "over 4 steps" in text


# --------------------------------------------------------------------------- il relabel
@pytest.fixture
def expert_copy(store_path, tmp_path) -> Path:
    """A store of the session's expert recording that a test may change."""
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store_path, copy)
    return copy


def test_relabel_with_other_thresholds_changes_the_labels_and_verifies(expert_copy, il):
    before = labels_of(expert_copy)
    code, out, err = il("relabel", str(expert_copy), "--rel-threshold", "0.8", "--window", "1")
    assert code == 0, err
    assert "over 1 steps; an axis is named above 0.8" in " ".join(out.split())
    labelling = assert_labelled_as_recorded(expert_copy)
    assert (labelling.rel_threshold, labelling.window) == (0.8, 1)
    assert labelling.abs_threshold == ABS_THRESHOLD  # not given: the store's own
    after = labels_of(expert_copy)
    assert (after != before).any()
    verified(il, expert_copy)
    assert il("relabel", str(expert_copy), "--rel-threshold", "0.3", "--window", "4")[0] == 0
    np.testing.assert_array_equal(labels_of(expert_copy), before)  # the recorded labels again


def unlabelled_copy(store_path: str, out: Path) -> Path:
    """The expert store as it was recorded before il labelled motions: no key, no settings."""
    with DemoStore.open(store_path) as store:
        schema = store.schema
        keys = {k: v for k, v in schema.keys.items() if k != KEY}
        source = {k: v for k, v in schema.source.items() if k not in (LABELS_ATTR, VOCABULARY_ATTR)}
        with DemoStore.create(out, StoreSchema(keys, schema.fps, schema.action, source)) as old:
            for ep in store.episodes():
                steps = store.read_episode(ep.index, list(keys))
                old.add_episode(steps, **{k: ep.meta[k] for k in ("task", "seed", "success")})
    return out


def test_relabel_adds_labels_to_a_store_recorded_without_them(store_path, tmp_path, il):
    old = unlabelled_copy(store_path, tmp_path / "old.zarr")
    text = " ".join(il("info", str(old))[1].split())
    assert f"language motion: none (recorded without them; `il relabel {old}` adds them)" in text
    assert il("relabel", str(old))[0] == 0
    assert_labelled_as_recorded(old)
    np.testing.assert_array_equal(labels_of(old), labels_of(store_path))
    assert "language motion: " in verified(il, old)


def test_a_robot_store_from_before_labels_takes_more_episodes_and_is_labelled_later(tmp_path, il):
    action = np.zeros((30, 4))
    action[:, 1], action[:, 3] = 1.0, -1.0
    out = tmp_path / "sim.zarr"
    rig = make_rig("sim:metaworld/reach-v3", hz=80)
    with rig.robot:
        schema = robot_schema(rig.robot, [], {}, 80)
        keys = {k: v for k, v in schema.keys.items() if k != KEY}
        source = {k: v for k, v in schema.source.items() if k not in (LABELS_ATTR, VOCABULARY_ATTR)}
        with DemoStore.create(out, StoreSchema(keys, 80, schema.action, source)) as store:
            Session(rig.robot, hz=80, source=ReplaySource([(action, 0)]), store=store).run()
    # a session today resumes into it without labels rather than refusing it
    make_rig("sim:metaworld/reach-v3", hz=80).run(ReplaySource([(action, 1)]), out=str(out))
    with DemoStore.open(out) as store:
        assert store.num_episodes == 2 and KEY not in store.schema.keys
    assert il("relabel", str(out))[0] == 0
    labelling = assert_labelled_as_recorded(out)
    assert labelling.abs_threshold == pytest.approx(ABS_THRESHOLD)  # from the stored limits
    assert (labels_of(out)[:20] == FORWARD).all()


# the writes of a relabel in order: the mark, the checksums marked missing, the labels, their
# checksums, the final attributes
WRITES = {
    "mark": ("copy.zarr/zarr.json", 0),
    "checksums cleared": ("meta/checksums/c", 0),
    "labels": (f"data/{KEY}/c", 0),
    "new checksums": ("meta/checksums/c", 1),
    "final attributes": ("copy.zarr/zarr.json", 1),
}


@pytest.mark.parametrize("write", list(WRITES))
def test_a_relabel_stopped_by_a_full_disk_leaves_a_readable_store(
    write, expert_copy, il, monkeypatch
):
    before = labels_of(expert_copy)
    args = ("relabel", str(expert_copy), "--rel-threshold", "0.8", "--window", "1")
    where, after = WRITES[write]
    full_disk(monkeypatch, where, after)
    line = one_line(il(*args))
    assert "no space left" in line and "the store stays readable" in line
    monkeypatch.undo()
    with DemoStore.open(expert_copy) as store:  # readable, nothing damaged, nothing lost
        assert find_damage(store) == []
        assert store.num_episodes == 8
    verified(il, expert_copy)
    mid = labels_of(expert_copy)
    assert il(*args)[0] == 0  # space freed: the same command finishes the job
    labelling = assert_labelled_as_recorded(expert_copy)
    new = labels_of(expert_copy)
    assert ((mid == before) | (mid == new)).all()  # each label was the old or the new one
    assert labelling.rel_threshold == 0.8
    text = " ".join(verified(il, expert_copy).split())
    assert "interrupted" not in text and "crc32 of every key, every episode" in text


@pytest.mark.parametrize("where", ["data/language_motion/c", "meta/checksums/zarr.json"])
def test_adding_labels_stopped_by_a_full_disk_leaves_the_store_as_it_was(
    where, store_path, tmp_path, il, monkeypatch
):
    old = unlabelled_copy(store_path, tmp_path / "copy.zarr")
    full_disk(monkeypatch, where)
    assert "no space left" in one_line(il("relabel", str(old)))
    monkeypatch.undo()
    with DemoStore.open(old) as store:
        assert KEY not in store.schema.keys and store.rewriting == KEY
        assert find_damage(store) == []
    assert "was interrupted" in " ".join(verified(il, old).split())
    assert il("relabel", str(old))[0] == 0
    assert_labelled_as_recorded(old)
    np.testing.assert_array_equal(labels_of(old), labels_of(store_path))


def test_relabel_refuses_what_it_cannot_do_in_one_line(tmp_path, expert_copy, il):
    assert "no store at" in one_line(il("relabel", str(tmp_path / "none.zarr")))
    line = one_line(il("relabel", str(expert_copy), "--rel-threshold", "nan"))
    assert "--rel-threshold" in line and "finite" in line
    line = one_line(il("relabel", str(expert_copy), "--abs-threshold", "-1"))
    assert "--abs-threshold" in line
    line = one_line(il("relabel", str(expert_copy), "--window", "0"))
    assert "--window" in line
