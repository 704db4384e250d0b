"""The table of env families: every row loads and describes itself, `import envs` imports no
simulator, and the one recorder, evaluation and CLI serve a maze as they serve Meta-World."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import envs
from envs.family import EnvFamily, RecordSpec
from il.data.store import DemoStore
from il.evaluate import evaluate
from il.policies.expert import expert_for_task
from il.record import record_expert
from robots.action import ActionSpec

IL = [sys.executable, "-m", "il.cli"]


@pytest.mark.parametrize("name", list(envs.FAMILIES))
def test_every_family_describes_itself_makes_envs_and_an_expert_that_acts(name):
    family = envs.family_of(name)
    assert isinstance(family, EnvFamily) and family.name == name
    assert envs.family_of(f"{name}/anything") is family
    assert family.listing.title and family.listing.suites
    assert all(n.startswith(f"{name}/") for n in (*family.env_names, *family.suite_names))
    assert set(family.env_names) <= set(envs.list_envs())
    assert family.action_convention["type"] and family.fps > 0
    assert envs.defaults(family.example) == {
        "obs": family.obs_keys,
        "max_episode_steps": family.max_episode_steps,
    }
    assert family.parse_obs(None) == family.obs_keys
    with pytest.raises(ValueError) as err:
        family.parse_obs("no-such-key")
    assert "\n" not in str(err.value)

    suite = envs.suite(family.example)
    assert suite.name.startswith(f"{name}/")
    task = suite.tasks[0]
    assert task.family == name  # how code holding only a task finds its family
    env = suite.make(task.name, obs=family.obs_keys)
    obs, _ = env.reset(seed=0)
    assert set(obs) == set(family.obs_keys)
    recording = family.recording(suite, RecordSpec(family.obs_keys, 32, 20, 10))
    assert set(family.obs_keys) <= set(recording.obs)
    assert {"action", "reward", "success", *(f"obs/{k}" for k in recording.obs)} <= set(
        recording.keys
    )
    convention = ActionSpec.from_json(family.action_convention)  # the typed convention reads it
    assert convention is not None and convention.to_json() == dict(family.action_convention)
    expert = family.expert(task)
    for _ in range(3):
        action, procedure = expert.act(obs)
        stored = recording.keys["action"]
        assert action.shape == stored.shape and action.dtype == np.dtype(stored.dtype)
        assert stored.shape == (convention.dim,)
        assert procedure and set(procedure) <= set(recording.keys)
        for key, value in procedure.items():
            value = np.asarray(value)
            assert value.shape == recording.keys[key].shape, key
            assert value.dtype == np.dtype(recording.keys[key].dtype), key
        obs, *_ = env.step(action)
    env.close()


def test_unknown_family_lists_the_table():
    with pytest.raises(envs.UnknownNameError, match="valid: metaworld, maze"):
        envs.family_of("robosuite/lift")


def test_import_envs_imports_no_simulator():
    code = (
        "import envs, sys; "
        "assert 'metaworld' not in sys.modules, 'metaworld'; "
        "assert 'mujoco' not in sys.modules, 'mujoco'; "
        "from envs import CAMERAS, TaskSuite, make; "
        "assert 'metaworld' in sys.modules and callable(envs.suite)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_maze_never_imports_metaworld_or_mujoco(tmp_path):
    """Naming one family imports no other's simulator, all the way through recording and
    evaluation."""
    code = (
        "import sys, envs\n"
        "from il.evaluate import evaluate\n"
        "from il.policies.expert import expert_for_task\n"
        "from il.record import record_expert\n"
        f"record_expert(envs.suite('maze/tunnel16/2'), {str(tmp_path / 'm.zarr')!r}, "
        "episodes_per_task=1)\n"
        "evaluate('maze/tunnel16/2', expert_for_task, episodes_per_task=1)\n"
        "envs.make('maze/tunnel16-test-0001')\n"
        "loaded = [m for m in ('metaworld', 'mujoco') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def assert_same_episodes(a: DemoStore, b: DemoStore) -> None:
    """The same schema and the same episodes, matched by (task, seed): a resumed store holds
    them in the order they were recorded."""
    assert a.schema == b.schema and a.num_episodes == b.num_episodes
    where = {(e.meta["task"], e.meta["seed"]): e.index for e in b.episodes()}
    for i in range(a.num_episodes):
        meta = a.episode(i).meta
        j = where[meta["task"], meta["seed"]]
        assert meta == b.episode(j).meta
        ra, rb = a.read_episode(i), b.read_episode(j)
        assert ra.keys() == rb.keys()
        for k in ra:
            np.testing.assert_array_equal(ra[k], rb[k], err_msg=f"episode {i} key {k}")


def test_the_one_recorder_records_a_maze_with_workers_resume_and_retries(tmp_path):
    """The maze goes through the code Meta-World goes through: spawned workers that change
    nothing, resume by (task, seed), --only-success retries, the family's schema."""
    suite = envs.suite("maze/tunnel16/3", split="test")
    alone = str(tmp_path / "alone.zarr")
    summary = record_expert(suite, alone, episodes_per_task=2, workers=1)
    assert (summary.recorded, summary.skipped) == (6, 0)
    resumed = str(tmp_path / "resumed.zarr")
    record_expert(suite, resumed, episodes_per_task=1, workers=1)
    summary = record_expert(suite, resumed, episodes_per_task=2, workers=2)
    assert (summary.recorded, summary.skipped, summary.episodes_in_store) == (3, 3, 6)
    store = DemoStore.open(alone)
    assert_same_episodes(store, DemoStore.open(resumed))
    maze = envs.family_of("maze")
    assert store.schema.fps == maze.fps and store.schema.action == dict(maze.action_convention)
    assert store.schema.source["env"] == "maze" and store.schema.source["split"] == "test"
    assert [int(s) for s in store.episode_meta()["seed"]] == [0, 1] * 3

    # One step is too short from most starts: failures are dropped and further seeds tried.
    short = record_expert(
        suite, str(tmp_path / "short.zarr"), episodes_per_task=1, max_episode_steps=1,
        only_success=True,
    )  # fmt: skip
    assert short.discarded > 0
    assert DemoStore.open(str(tmp_path / "short.zarr")).episode_meta()["success"].all()

    with pytest.raises(ValueError, match="discrete"):
        record_expert(suite, str(tmp_path / "noisy.zarr"), episodes_per_task=1, action_noise=0.1)


def test_the_expert_reference_row_of_a_maze_goes_through_evaluation():
    report = evaluate("maze/tunnel16/2", expert_for_task, episodes_per_task=3, workers=1)
    assert report.success_rate == 1.0 and report.suite == "maze/tunnel16/2"


def test_il_envs_prints_every_familys_rows_and_defaults():
    out = subprocess.run([*IL, "envs"], capture_output=True, text=True, check=True).stdout
    for family in envs.families():
        assert family.listing.title in out
        assert f"--obs {','.join(family.obs_keys)}" in out
        for row in family.listing.suites:
            assert row[0] in out


def test_a_request_a_family_cannot_record_is_a_one_line_error(tmp_path):
    proc = subprocess.run(
        [*IL, "record", "--env", "maze/tunnel16/2", "--action-noise", "0.1",
         "--out", str(tmp_path / "x.zarr")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2 and "discrete" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
