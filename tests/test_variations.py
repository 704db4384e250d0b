"""Which variations a recording holds and an evaluation plays: the task seed (Meta-World's
benchmark seed) that draws them, the variation stored with every episode, replacements that
never replay a variation, `il info`'s coverage, and a resumed recording that is byte for byte
the uninterrupted one. Real MuJoCo, real zarr."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import envs
from il.data.store import DemoStore, StoreError
from il.evaluate import evaluate
from il.policies.expert import expert_for_task
from il.record import record_expert

IL = [sys.executable, "-m", "il.cli"]


def run_il(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*IL, *args], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"il {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


# reach-v3's first variation under task seed 0, as every earlier release built it: the object
# (its position is unused by reach, but drawn) and the goal, in the state's layout.
REACH_SEED0_OBJECT = [-0.012482557445764542, 0.6891772747039795, 0.019999999552965164]
REACH_SEED0_GOAL = [-0.02331169694662094, 0.8791725039482117, 0.18222373723983765]


def test_task_seed_draws_other_variations_and_zero_keeps_the_old_ones(tmp_path):
    def first_state(task_seed: int) -> np.ndarray:
        env = envs.suite("metaworld/reach-v3", seed=task_seed).make("reach-v3")
        obs, _ = env.reset(seed=0)
        env.close()
        return obs["state"]

    env = envs.make("metaworld/reach-v3")
    obs, _ = env.reset(seed=0)
    env.close()
    zero, one = first_state(0), first_state(1)
    np.testing.assert_array_equal(obs["state"], zero)
    assert zero[4:7].tolist() == REACH_SEED0_OBJECT and zero[36:].tolist() == REACH_SEED0_GOAL
    assert not np.allclose(one[4:7], zero[4:7]) and not np.allclose(one[36:], zero[36:])

    # il eval: the task seed and the variations in the JSON and under the table, other
    # episodes than task seed 0's (the default, in-process here)
    out = tmp_path / "one.json"
    proc = run_il("eval", "--policy", "expert", "--env", "metaworld/reach-v3", "--seed", "48",
                  "--episodes-per-task", "3", "--workers", "1", "--task-seed", "1",
                  "--json", str(out))  # fmt: skip
    assert "task seed 1, variations 48-49, 0 of each task" in proc.stdout
    seeded = json.loads(out.read_text())
    assert seeded["task_seed"] == 1 and seeded["tasks"]["reach-v3"]["variations"] == [48, 49, 0]
    default = evaluate("metaworld/reach-v3", expert_for_task, episodes_per_task=3, seed=48)
    assert default.task_seed == 0 and default.to_json()["task_seed"] == 0
    lengths = [e["length"] for e in seeded["tasks"]["reach-v3"]["episodes"]]
    assert lengths != [e.length for e in default.tasks[0].episodes]

    # il record keeps the task seed with the store and with every episode
    store = str(tmp_path / "one.zarr")
    run_il("record", "--env", "metaworld/reach-v3", "--task-seed", "1", "--episodes-per-task",
           "2", "--max-episode-steps", "5", "--workers", "1", "--out", store)  # fmt: skip
    with DemoStore.open(store) as recorded:
        assert recorded.schema.source["task_seed"] == 1
        assert recorded.episode_meta()["task_seed"].tolist() == [1, 1]
        np.testing.assert_array_equal(recorded.read_episode(0, ["obs/state"])["obs/state"][0], one)
    # resuming it under another task seed would mix variations in one store
    with pytest.raises(StoreError, match="holds variations of task seed 1; record task seed 0"):
        record_expert(envs.suite("metaworld/reach-v3"), store, episodes_per_task=3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "--policy", "expert", "--task-seed", "-1"], "'--task-seed': -1 is not in"),
        (["eval", "--policy", "expert", "--task-seed", "x"], "'--task-seed': 'x' is not a valid"),
        (["record", "--task-seed", "99999999999", "--out", "x.zarr"], "is not in the range"),
        (
            ["eval", "--policy", "expert", "--env", "maze/tunnel16/2", "--task-seed", "1"],
            "mazes have no task seed",
        ),
        (
            [
                "record",
                "--robot",
                "sim:metaworld/reach-v3",
                "--teleop",
                "keyboard",
                "--task-seed",
                "1",
                "--out",
                "x",
            ],
            "a simulated robot takes `task_seed`",
        ),
    ],
)
def test_bad_task_seeds_are_one_line(args, message):
    proc = run_il(*args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_every_episode_stores_its_variation(tmp_path):
    out = str(tmp_path / "v.zarr")
    suite = envs.suite("metaworld/reach-v3")
    record_expert(suite, out, episodes_per_task=3, seed=48, max_episode_steps=5)
    with DemoStore.open(out) as store:
        meta = store.episode_meta()
        assert meta["seed"].tolist() == [48, 49, 50]
        assert meta["variation"].tolist() == [48, 49, 0]  # seed s plays variation s mod 50
        assert meta["task_seed"].tolist() == [0, 0, 0]
        assert store.schema.source["variations"] == {"reach-v3": 50}
        assert store.episode(2).meta["variation"] == 0


# reach-v3 (task seed 0) cut at 45 steps: the expert succeeds on 26 of the 50 variations.
REACH_45_SUCCESSES = [1, 2, 3, 5, 6, 9, 12, 14, 15, 16, 17, 21, 22, 23, 24, 25, 28, 30, 32, 34,
                      36, 38, 39, 41, 43, 45]  # fmt: skip


def test_replacing_failed_episodes_never_replays_a_variation(tmp_path):
    out = str(tmp_path / "replaced.zarr")
    proc = run_il("record", "--env", "metaworld/reach-v3", "--episodes-per-task", "27",
                  "--only-success", "--max-episode-steps", "45", "--workers", "1",
                  "--out", out)  # fmt: skip
    # every variation was tried once; the task is one short and says so in one line
    assert "26 episodes" in proc.stdout and "24 failed and dropped" in proc.stdout
    assert (
        "reach-v3 has 26 of 27 episodes: no unused variation left (all 50 tried, the expert "
        "failed on 24); ask for at most 26, or drop --only-success"
    ) in proc.stdout
    with DemoStore.open(out) as store:
        meta = store.episode_meta()
        assert meta["success"].all()
        assert sorted(meta["variation"].tolist()) == REACH_45_SUCCESSES  # no variation twice
    report = json.loads(run_il("info", out, "--json").stdout)["variations"]["reach-v3"]
    assert report["stored"] == 26 and report["total"] == 50 and report["duplicates"] == []
    assert report["missing"] == sorted(set(range(50)) - set(REACH_45_SUCCESSES))
    text = run_il("info", out).stdout
    assert "26 of 50" in text and "no duplicate variations" in text

    # the same request from the middle of the variations replaces with those after it, round
    # the end, and takes the first successes in that order
    summary = record_expert(
        envs.suite("metaworld/reach-v3"),
        str(tmp_path / "from40.zarr"),
        episodes_per_task=8,
        seed=40,
        only_success=True,
        max_episode_steps=45,
    )
    assert summary.recorded == 8 and summary.short == []
    with DemoStore.open(tmp_path / "from40.zarr") as store:
        assert store.episode_meta()["variation"].tolist() == [41, 43, 45, 1, 2, 3, 5, 6]


def test_il_info_reports_duplicate_variations(tmp_path):
    out = str(tmp_path / "dup.zarr")
    suite = envs.suite("metaworld/reach-v3")
    record_expert(suite, out, episodes_per_task=2, max_episode_steps=5)  # seeds 0, 1
    # asked for seeds from 50 on, the store takes 50 and 51: variations 0 and 1 again
    record_expert(suite, out, episodes_per_task=4, seed=50, max_episode_steps=5)
    report = json.loads(run_il("info", out, "--json").stdout)["variations"]["reach-v3"]
    assert report["stored"] == 2 and report["task_seeds"] == [0]
    assert report["duplicates"] == [
        {"task_seed": 0, "variation": 0, "episodes": [0, 2]},
        {"task_seed": 0, "variation": 1, "episodes": [1, 3]},
    ]
    text = run_il("info", out).stdout
    assert "duplicate variations (task: variation ×episodes): reach-v3: 0 ×2, 1 ×2" in text
    assert "2 of 50" in text


def test_a_store_from_before_variations_reads_them_as_unknown_and_takes_new_episodes(tmp_path):
    out = tmp_path / "old.zarr"
    suite = envs.suite("metaworld/reach-v3")
    record_expert(suite, str(out), episodes_per_task=1, max_episode_steps=5)
    for name in ("variation", "task_seed"):  # what a store written before them holds
        shutil.rmtree(out / "meta" / name)
    with DemoStore.open(out) as store:
        assert store.num_episodes == 1
        assert store.episode_meta()["variation"].tolist() == [-1]
        assert store.info()["variations"] == {}
    record_expert(suite, str(out), episodes_per_task=2, max_episode_steps=5)
    with DemoStore.open(out) as store:
        meta = store.episode_meta()
        assert meta["variation"].tolist() == [-1, 1] and meta["task_seed"].tolist() == [-1, 0]
    assert "1 of 50" in run_il("info", str(out)).stdout


def _assert_byte_identical(a: str, b: str) -> None:
    """Every array of the two stores, data and per-episode metadata, byte for byte."""
    with DemoStore.open(a) as one, DemoStore.open(b) as two:
        assert one.num_episodes == two.num_episodes
        assert one.schema == two.schema
        for key in one.schema.keys:
            x, y = one.array(key)[: one.num_steps], two.array(key)[: two.num_steps]
            assert x.dtype == y.dtype and x.shape == y.shape, key
            assert x.tobytes() == y.tobytes(), f"{key} differs"
        for name, x in one.episode_meta().items():
            y = two.episode_meta()[name]
            assert x.tolist() == y.tolist(), name
        np.testing.assert_array_equal(one.episode_ends, two.episode_ends)


class _Stop(Exception):
    """Stands for Ctrl-C after some episodes are committed."""


def test_a_resumed_recording_is_the_uninterrupted_one_byte_for_byte(tmp_path):
    """Push leaves its puck somewhere else at every episode's end; a new env (the resumed run's)
    and a reused one (the uninterrupted run's) must start the next episode from the same
    simulator state, down to the first frame's pixels."""
    suite = envs.suite("metaworld/push-v3")
    options = dict(episodes_per_task=5, obs=("state", "image/corner"), image_size=32)
    whole = str(tmp_path / "whole.zarr")
    record_expert(suite, whole, **options)
    resumed = str(tmp_path / "resumed.zarr")
    committed = []

    def stop_after_two(task: str, success: bool) -> None:
        committed.append(task)
        if len(committed) == 2:
            raise _Stop

    with pytest.raises(_Stop):
        record_expert(suite, resumed, on_episode=stop_after_two, **options)
    assert DemoStore.open(resumed).num_episodes == 2
    summary = record_expert(suite, resumed, **options)
    assert (summary.skipped, summary.recorded) == (2, 3)
    _assert_byte_identical(whole, resumed)


def test_a_resumed_recording_with_replacements_is_the_uninterrupted_one(tmp_path):
    """Two tasks, cut at 60 steps: reach always makes it, button-press-topdown on a few
    variations only (seeds 2, 5 and 10 of the first eleven), so its replacements take four
    rounds. Stopped after any committed episode and resumed, the store is the uninterrupted
    run's, in the same order."""
    reach = envs.suite("metaworld/reach-v3")
    button = envs.suite("metaworld/button-press-topdown-v3")
    # two tasks in one suite, as MT10's would be, without building MT10's 500 variations
    tasks = (reach.tasks[0], dataclasses.replace(button.tasks[0], index=1))
    suite = dataclasses.replace(reach, name="metaworld/reach-and-button", tasks=tasks)
    options = dict(episodes_per_task=3, max_episode_steps=60, only_success=True)
    whole = str(tmp_path / "whole.zarr")
    summary = record_expert(suite, whole, **options)
    assert (summary.recorded, summary.discarded) == (6, 8)
    with DemoStore.open(whole) as store:
        meta = store.episode_meta()
        assert meta["seed"].tolist() == [0, 1, 2, 2, 5, 10]
        assert meta["task"].tolist() == ["reach-v3"] * 3 + ["button-press-topdown-v3"] * 3
    for stop_at in (1, 4, 5):  # in the first round, at its end, in the replacements
        resumed = str(tmp_path / f"resumed-{stop_at}.zarr")
        kept = []

        def stop(task: str, success: bool, kept=kept, stop_at=stop_at) -> None:
            kept.append(success)
            if sum(kept) == stop_at:
                raise _Stop

        with pytest.raises(_Stop):
            record_expert(suite, resumed, on_episode=stop, **options)
        record_expert(suite, resumed, **options)
        _assert_byte_identical(whole, resumed)


def test_a_checkpoint_is_evaluated_under_its_demonstrations_task_seed(tmp_path):
    from conftest import config_for

    from il.evaluate import evaluate_checkpoint
    from il.train import train

    store = str(tmp_path / "seed1.zarr")
    suite = envs.suite("metaworld/reach-v3", seed=1)
    record_expert(suite, store, episodes_per_task=4, max_episode_steps=20)
    run = tmp_path / "run"
    train(config_for(store, run, "train.val_fraction=0", "data.only_success=false"))
    kwargs = dict(episodes_per_task=2, max_episode_steps=5)
    mine = evaluate_checkpoint(run, **kwargs)
    other = evaluate_checkpoint(run, task_seed=0, **kwargs)
    assert (mine.task_seed, other.task_seed) == (1, 0)
    first = {}
    for name, report in (("mine", mine), ("other", other)):
        env = envs.suite("metaworld/reach-v3", seed=report.task_seed).make("reach-v3")
        first[name] = env.reset(seed=report.tasks[0].episodes[0].seed)[0]["state"]
        env.close()
    with DemoStore.open(store) as recorded:
        demo = recorded.read_episode(0, ["obs/state"])["obs/state"][0]
    np.testing.assert_array_equal(first["mine"], demo)  # the demonstrations' variation 0
    assert not np.array_equal(first["other"], demo)
