"""The environment constructor, suites, seeding and vector envs — on real MuJoCo."""

from __future__ import annotations

import numpy as np
import pytest

import envs
from envs.metaworld import DIFFICULTY, TASKS


@pytest.fixture(scope="module")
def pick_place():
    env = envs.make(
        "metaworld/pick-place-v3", obs=("state", "image/corner", "image/corner2"), image_size=64
    )
    yield env
    env.close()


def test_observation_dict_matches_space(pick_place):
    obs, info = pick_place.reset(seed=3)
    assert set(obs) == {"state", "image/corner", "image/corner2"}
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (39,)
    assert obs["image/corner"].dtype == np.uint8 and obs["image/corner"].shape == (64, 64, 3)
    assert pick_place.observation_space.contains(obs)
    assert info["variation"] == 3 and info["task"] == "pick-place-v3"
    obs, reward, terminated, truncated, info = pick_place.step(np.zeros(4, dtype=np.float32))
    assert pick_place.observation_space.contains(obs)
    assert isinstance(reward, float) and isinstance(info["success"], bool)
    assert not terminated and not truncated


def test_seed_fixes_variation_and_episode(pick_place):
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(20, 4)).astype(np.float32)

    def rollout(seed):
        obs, info = pick_place.reset(seed=seed)
        states = [obs["state"]]
        for a in actions:
            states.append(pick_place.step(a)[0]["state"])
        return info["variation"], np.stack(states)

    v1, s1 = rollout(7)
    v2, s2 = rollout(7)
    v3, s3 = rollout(8)
    assert v1 == v2 == 7 and v3 == 8
    np.testing.assert_array_equal(s1, s2)
    # Different variations place the puck differently.
    assert not np.allclose(s1[0, 4:7], s3[0, 4:7])


def test_variation_option_and_range(pick_place):
    _, info = pick_place.reset(options={"variation": 49})
    assert info["variation"] == 49
    with pytest.raises(ValueError, match="out of range"):
        pick_place.reset(options={"variation": 50})


def test_truncation_and_terminate_on_success():
    env = envs.make("metaworld/reach-v3", max_episode_steps=5)
    env.reset(seed=0)
    flags = [env.step(np.zeros(4))[3] for _ in range(5)]
    assert flags == [False] * 4 + [True]
    env.close()

    from envs.experts import ScriptedExpert

    env = envs.make("metaworld/reach-v3", terminate_on_success=True)
    expert = ScriptedExpert("reach-v3")
    obs, _ = env.reset(seed=1)
    for _ in range(500):
        obs, _, terminated, truncated, info = env.step(expert(obs))
        if terminated or truncated:
            break
    assert terminated and info["success"]
    env.close()


def test_bad_actions_are_rejected(pick_place):
    pick_place.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        pick_place.step(np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        pick_place.step(np.array([0.0, np.nan, 0.0, 0.0]))


def test_mt10_suite_has_fixed_variations():
    mt10 = envs.suite("metaworld/MT10")
    assert len(mt10) == 10
    assert [t.index for t in mt10] == list(range(10))
    assert all(len(t.variations) == 50 for t in mt10)
    assert all(t.instruction for t in mt10)
    again = envs.suite("metaworld/MT10")
    assert mt10.tasks[0].variations == again.tasks[0].variations  # reproducible
    # A subset keeps the suite's order, variations and one-hot indices, not the order asked for.
    part = mt10.subset(["peg-insert-side", "reach-v3"])
    assert part.task_names == ("reach-v3", "peg-insert-side-v3") and part.name == mt10.name
    assert [t.index for t in part] == [0, 7]
    assert part.task("peg-insert-side-v3").variations == mt10.tasks[7].variations
    with pytest.raises(ValueError, match="did you mean 'reach-v3'"):
        mt10.subset(["reach-v2"])
    with pytest.raises(ValueError, match="no tasks named"):
        mt10.subset([])


def test_ml10_splits_hide_the_goal():
    train = envs.suite("metaworld/ML10", split="train")
    test = envs.suite("metaworld/ML10", split="test")
    assert len(train) == 10 and len(test) == 5
    assert not set(train.task_names) & set(test.task_names)
    env = test.make(test.task_names[0])
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs["state"][36:39], 0.0)  # goal not observed in ML
    env.close()
    env = envs.make("metaworld/reach-v3")
    obs, _ = env.reset(seed=0)
    assert np.any(obs["state"][36:39] != 0.0)  # observed in MT
    env.close()


def test_difficulty_groups_partition_mt50():
    sizes = {k: len(v) for k, v in DIFFICULTY.items()}
    assert sizes == {"easy": 28, "medium": 11, "hard": 6, "very_hard": 5}
    every = [t for group in DIFFICULTY.values() for t in group]
    assert sorted(every) == sorted(TASKS) and len(set(every)) == 50


def test_hard_group_builds():
    hard = envs.suite("metaworld/hard")
    assert hard.task_names == DIFFICULTY["hard"]
    assert all(len(t.variations) == 50 for t in hard)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: envs.make("metaworld/pick-place-v4"), "did you mean 'pick-place-v3'"),
        (lambda: envs.make("metaworld/MT10"), "is a suite"),
        (lambda: envs.make("pick-place-v3"), "needs a family prefix"),
        (lambda: envs.make("robosuite/lift"), "unknown environment family"),
        (lambda: envs.suite("metaworld/ML11"), "did you mean"),
        (lambda: envs.suite("metaworld/MT10", split="test"), "valid: train"),
        (lambda: envs.suite("metaworld/ML10", split="val"), "split"),
        (lambda: envs.suite("metaworld/MT1"), "needs a task"),
        (lambda: envs.make("metaworld/reach-v3", obs=("image/cornr",)), "did you mean 'corner'"),
        (lambda: envs.make("metaworld/reach-v3", obs=("depth",)), "observation key"),
    ],
)
def test_unknown_names_get_one_line_errors(call, message):
    with pytest.raises(envs.UnknownNameError) as err:
        call()
    text = str(err.value)
    assert message in text
    assert "\n" not in text


def test_sync_vector_env_batches_several_tasks():
    suite = envs.suite("metaworld/ML10", split="test")
    vec = suite.make_vec(envs_per_task=1, obs=("state", "image/corner"), image_size=32)
    obs, _ = vec.reset(seed=0)
    assert obs["state"].shape == (5, 39) and obs["image/corner"].shape == (5, 32, 32, 3)
    _, reward, _, _, info = vec.step(np.zeros((5, 4), dtype=np.float32))
    assert reward.shape == (5,) and info["success"].shape == (5,)
    vec.close()


def test_async_vector_env_runs_in_spawned_workers():
    vec = envs.make_vec(
        "metaworld/reach-v3", envs_per_task=2, vectorization_mode="async", obs=("state",)
    )
    obs, _ = vec.reset(seed=[0, 1])
    assert obs["state"].shape == (2, 39)
    for _ in range(3):
        obs, *_ = vec.step(np.zeros((2, 4), dtype=np.float32))
    assert np.all(np.isfinite(obs["state"]))
    vec.close()


def test_envs_does_not_import_il():
    import subprocess
    import sys

    code = (
        "import sys, envs, robots, envs.experts, envs.language_motion; "
        "print(any(m == 'il' or m.startswith('il.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
