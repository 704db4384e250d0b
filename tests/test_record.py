"""`il record --source expert` and `il info`: real MuJoCo rollouts into a real zarr store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import envs
from envs.experts import ScriptedExpert
from envs.language_motion import VOCABULARY
from il.data.store import DemoStore
from il.record import record_expert

IL = [sys.executable, "-m", "il.cli"]


def run_il(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*IL, *args], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"il {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def assert_same_episodes(a: DemoStore, b: DemoStore, n: int | None = None) -> None:
    n = a.num_episodes if n is None else n
    assert b.num_episodes >= n
    for i in range(n):
        ea, eb = a.episode(i), b.episode(i)
        assert ea.meta == eb.meta
        ra, rb = a.read_episode(i), b.read_episode(i)
        for k in ra:
            np.testing.assert_array_equal(ra[k], rb[k], err_msg=f"episode {i} key {k}")


@pytest.fixture(scope="module")
def reach_store(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("rec") / "reach.zarr")
    summary = record_expert(
        envs.suite("metaworld/reach-v3"),
        out,
        episodes_per_task=3,
        obs=("state", "image/corner"),
        image_size=32,
        steps_after_success=5,
        workers=1,
    )
    assert summary.recorded == 3 and summary.episodes_in_store == 3
    return out


def test_recorded_keys_and_metadata(reach_store):
    store = DemoStore.open(reach_store)
    keys = set(store.schema.keys)
    assert {"obs/state", "obs/image/corner", "action", "reward", "success", "sim_state"} <= keys
    assert {"procedure/phase", "procedure/target", "language_motion"} <= keys
    meta = store.episode_meta()
    assert list(meta["task"]) == ["reach-v3"] * 3
    assert list(meta["seed"]) == [0, 1, 2]
    assert meta["success"].all()
    assert all(m == envs.INSTRUCTIONS["reach-v3"] for m in meta["instruction"])
    assert store.schema.action["type"] == "ee_delta"
    assert store.schema.source["phases"]["reach-v3"]
    ep = store.read_episode(0)
    success = ep["success"]
    first = int(np.argmax(success))
    assert success[first] and len(success) == first + 1 + 5  # 5 steps kept after success
    assert ep["obs/image/corner"].shape[1:] == (32, 32, 3)
    labels = ep["language_motion"]
    assert labels.min() >= 0 and labels.max() < len(VOCABULARY)


def test_sim_state_replays_the_episode_exactly(reach_store):
    store = DemoStore.open(reach_store)
    ep = store.read_episode(1)
    env = envs.make("metaworld/reach-v3")
    env.reset(seed=int(store.episode(1).meta["seed"]))
    k = 7
    env.set_sim_state(ep["sim_state"][k])
    for t in range(k, k + 10):
        obs, *_ = env.step(ep["action"][t])
        np.testing.assert_array_equal(obs["state"], ep["obs/state"][t + 1])
    env.close()


def test_resume_skips_recorded_episodes_and_matches_a_fresh_run(reach_store, tmp_path):
    out = str(tmp_path / "resume.zarr")
    suite = envs.suite("metaworld/reach-v3")
    kwargs = dict(obs=("state", "image/corner"), image_size=32, steps_after_success=5)
    record_expert(suite, out, episodes_per_task=1, **kwargs)
    summary = record_expert(suite, out, episodes_per_task=3, workers=2, **kwargs)
    assert (summary.recorded, summary.skipped) == (2, 1)
    assert_same_episodes(DemoStore.open(reach_store), DemoStore.open(out))


def test_action_noise_executes_perturbed_actions_and_keeps_the_experts_labels(tmp_path):
    out = str(tmp_path / "noisy.zarr")
    suite = envs.suite("metaworld/reach-v3")
    record_expert(suite, out, episodes_per_task=1, steps_after_success=0, action_noise=0.3)
    store = DemoStore.open(out)
    assert store.schema.source["action_noise"] == 0.3
    ep = store.read_episode(0)
    label, executed = ep["action"], ep["executed_action"]
    assert np.abs(executed).max() <= 1.0
    assert 0.1 < np.std(executed - label) < 0.5  # clipping shrinks the noise a little
    # the states are those the executed actions led to...
    env = envs.make("metaworld/reach-v3")
    env.reset(seed=0)
    env.set_sim_state(ep["sim_state"][3])
    obs, *_ = env.step(executed[3])
    np.testing.assert_array_equal(obs["state"], ep["obs/state"][4])
    env.close()
    # ...and each label is what the expert commands in its state
    expert = ScriptedExpert("reach-v3")
    for t in (0, 3, len(label) - 1):
        command, _ = expert.act(ep["obs/state"][t])
        np.testing.assert_allclose(label[t], np.clip(command, -1, 1), atol=1e-6)
    # and a re-recording is the same episode (the noise is seeded by the episode)
    again = str(tmp_path / "again.zarr")
    record_expert(suite, again, episodes_per_task=1, steps_after_success=0, action_noise=0.3)
    assert_same_episodes(store, DemoStore.open(again))


def test_only_success_drops_failures(tmp_path):
    summary = record_expert(
        envs.suite("metaworld/pick-place-v3"),
        str(tmp_path / "fail.zarr"),
        episodes_per_task=1,
        max_episode_steps=3,  # too short for any success
        only_success=True,
    )
    # every one of the task's 50 variations was tried once, none twice
    assert summary.recorded == 0 and summary.discarded == 50
    assert summary.short == [
        "pick-place-v3 has 0 of 1 episodes: no unused variation left (all 50 tried, the expert "
        "failed on 50); give the episodes more steps, or drop --only-success"
    ]


def test_cli_record_and_info(tmp_path):
    out = str(tmp_path / "cli.zarr")
    run_il(
        "record", "--env", "metaworld/ML10", "--split", "test", "--episodes-per-task", "1",
        "--out", out, "--workers", "2", "--max-episode-steps", "60", "--full-episodes",
    )  # fmt: skip
    report = json.loads(run_il("info", out, "--json").stdout)
    assert report["episodes"] == 5 and report["steps"] == 5 * 60
    assert len(report["tasks"]) == 5
    assert report["keys"]["obs/state"]["shape"] == [300, 39]
    assert report["keys"]["obs/state"]["bytes_on_disk"] > 0
    text = run_il("info", out).stdout
    assert "5 episodes" in text and "drawer-open-v3" in text
    part = str(tmp_path / "part.zarr")
    run_il("record", "--env", "metaworld/MT10", "--tasks", "drawer-close", "--episodes-per-task",
           "2", "--out", part, "--workers", "1", "--max-episode-steps", "20")  # fmt: skip
    report = json.loads(run_il("info", part, "--json").stdout)
    assert report["tasks"] == {"drawer-close-v3": 2}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["info", "/nonexistent/x.zarr"], "no store at"),
        (["record", "--env", "metaworld/MT11", "--out", "x.zarr"], "did you mean"),
        (["record", "--obs", "state,image/cornr", "--out", "x.zarr"], "did you mean"),
        (["record", "--tasks", " , ", "--out", "x.zarr"], "--tasks names no task"),
    ],
)
def test_cli_errors_are_one_line(args, message):
    proc = run_il(*args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


def test_kill_9_or_ctrl_c_during_il_record_keeps_committed_episodes_and_resumes(tmp_path):
    args = ["record", "--env", "metaworld/ML10", "--split", "test", "--episodes-per-task", "2",
            "--workers", "1", "--obs", "state,image/corner", "--image-size", "24",
            "--max-episode-steps", "150"]  # fmt: skip
    reference = str(tmp_path / "reference.zarr")
    run_il(*args, "--out", reference)
    ref = DemoStore.open(reference)
    assert ref.num_episodes == 10

    out = str(tmp_path / "killed.zarr")
    rng = np.random.default_rng(0)
    seen = 0
    for sig in (signal.SIGKILL, signal.SIGINT, signal.SIGKILL):  # kill -9, Ctrl-C, kill -9
        proc = subprocess.Popen([*IL, *args, "--out", out], stderr=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if Path(out).exists() and DemoStore.open(out).num_episodes > seen:
                break
            time.sleep(0.05)
        time.sleep(float(rng.uniform(0.0, 0.5)))
        if proc.poll() is None:
            os.kill(proc.pid, sig)
        rc = proc.wait(timeout=60)
        assert rc in (0, -signal.SIGKILL, 130)  # 130: interrupted, exited cleanly
        store = DemoStore.open(out)
        assert store.num_episodes >= seen
        assert_same_episodes(store, ref)  # every committed episode bit-identical
        seen = store.num_episodes
    run_il(*args, "--out", out)  # resumes to completion
    done = DemoStore.open(out)
    assert done.num_episodes == 10
    assert_same_episodes(ref, done)


def test_a_reused_env_records_the_same_episode_as_a_new_one():
    """Recording keeps each process's envs from one episode to the next (building one costs
    more than an episode); a kept env must record exactly what a new one would."""
    from il.record import RecordSpec, _close_envs, plan_recording, rollout_expert

    suite = envs.suite("metaworld/MT10")
    task = next(t for t in suite.tasks if t.name == "pick-place-v3")
    spec = RecordSpec(("state", "image/corner"), 32, 60, 5)
    plan = plan_recording(suite, spec)
    _close_envs()
    fresh, _ = rollout_expert(plan, task, 3)
    rollout_expert(plan, task, 8)  # another variation in between, same env
    again, _ = rollout_expert(plan, task, 3)
    _close_envs()
    assert fresh.keys() == again.keys()
    for key in fresh:
        np.testing.assert_array_equal(fresh[key], again[key], err_msg=key)
