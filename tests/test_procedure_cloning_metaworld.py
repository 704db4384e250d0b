"""Procedure cloning on Meta-World: the experts' procedure through the store, the chained
policy's training and acting, its intermediate-output hook, and the experiment runner."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_MODELS, config_for

import envs
from envs.experts import ScriptedExpert
from il.data.store import DemoStore
from il.methods.procedure_cloning.metaworld import PROCEDURE_KEYS
from il.policies.registry import load_policy
from il.train import ConfigError, load_config, prepare_data, train

TINY = TINY_MODELS["pc-metaworld"]


def pc_config(store_path, out, *overrides, policy="pc-metaworld"):
    return config_for(store_path, out, *overrides, policy=policy)


def test_procedure_keys_round_trip_through_the_store(store_path):
    """What the store holds per step is what the expert computed from that step's state."""
    store = DemoStore.open(store_path)
    meta = store.episode_meta()
    for episode in (0, store.num_episodes - 1):
        steps = store.read_episode(episode)
        expert = ScriptedExpert(str(meta["task"][episode]))
        for t in range(len(steps["obs/state"])):
            action, procedure = expert.act(steps["obs/state"][t])
            np.testing.assert_array_equal(steps["action"][t], np.clip(action, -1, 1))
            for name, value in procedure.as_arrays().items():
                stored = steps[f"procedure/{name}"][t]
                assert stored.dtype == value.dtype, name
                np.testing.assert_array_equal(stored, value, err_msg=f"{name} at step {t}")
        phases = store.schema.source["phases"][str(meta["task"][episode])]
        assert steps["procedure/phase"].max() < len(phases)


def test_procedure_is_learnt_on_normalized_values(store_path, tmp_path):
    config = pc_config(store_path, tmp_path / "n")
    data = prepare_data(config, config.model)
    modes = data.normalizer.modes
    assert modes["procedure/target"] == modes["procedure/hand"] == "mean_std"
    assert "procedure/phase" not in modes  # a class, not a quantity
    batch = data.train.batch(np.arange(8))
    assert set(PROCEDURE_KEYS) <= set(batch)
    assert batch["procedure/target"].shape == (8, 1, 3)


@pytest.mark.parametrize("policy", ["pc-metaworld", "aux-bc-metaworld"])
def test_losses_fall_on_a_tiny_batch(store_path, tmp_path, policy):
    config = pc_config(store_path, tmp_path / policy, policy=policy)
    data = prepare_data(config, config.model)
    from il.train import policy_class

    torch.manual_seed(0)
    model = policy_class(policy)(config.model, data.spec, data.normalizer)
    batch = {k: torch.from_numpy(v) for k, v in data.train.batch(np.arange(64)).items()}
    batch["task"] = torch.from_numpy(data.train_tasks[:64].astype(np.int64))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss, metrics = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first = first or metrics
    for name in ("mse", "mse_positions", "ce_phase", "mse_target"):
        assert metrics[name] < 0.5 * first[name], (name, first[name], metrics[name])
    assert metrics["phase_accuracy"] > 0.9


def test_chained_heads_see_the_links_before_them(store_path, tmp_path):
    chained = load_config("pc-metaworld", None, [f"data.path={store_path}", *TINY])
    plain = load_config("aux-bc-metaworld", None, [f"data.path={store_path}", *TINY])
    data = prepare_data(chained, chained.model)
    from il.train import policy_class

    pc = policy_class("pc-metaworld")(chained.model, data.spec, data.normalizer)
    aux = policy_class("aux-bc-metaworld")(plain.model, data.spec, data.normalizer)
    k = chained.model.max_phases
    inputs = {n: h[0].in_features for n, h in pc.heads.items()}
    assert inputs == {"positions": 32, "phase": 32 + 9, "target": 32 + 9 + k, "action": 45 + k}
    assert {h[0].in_features for h in aux.heads.values()} == {32}
    with pytest.raises(ValueError, match="does not chain"):
        policy_class("aux-bc-metaworld")(chained.model, data.spec, data.normalizer)


def test_too_few_phase_classes_is_one_line(store_path, tmp_path):
    with pytest.raises(ValueError, match=r"set model\.max_phases above it"):
        train(pc_config(store_path, tmp_path / "p", "model.max_phases=1"))


def test_procedure_is_read_and_overridden_while_acting(store_path, tmp_path):
    """The chain the action is read from is exposed after act(); an override of part of it
    (here the target) changes the action, and the checkpoint acts the same after reloading."""
    train(pc_config(store_path, tmp_path / "pc", "train.steps=200"))
    policy = load_policy(tmp_path / "pc")
    env = envs.make("metaworld/reach-v3")
    obs, _ = env.reset(seed=0)
    policy.reset(task="reach-v3", seed=0)
    action = policy.act(obs)
    chain = policy.intermediate
    assert set(chain) == {"hand", "object", "goal", "phase", "target", "grab_effort"}
    assert chain["target"].shape == (3,) and isinstance(chain["phase"], int)

    again = load_policy(tmp_path / "pc")
    again.reset(task="reach-v3", seed=0)
    np.testing.assert_allclose(again.act(obs), action, rtol=1e-5, atol=1e-6)

    assert policy.intermediate_text().startswith(f"phase {chain['phase']}, target ")
    assert not policy.intermediate_overridden
    far = chain["hand"] + np.array([0.3, 0.0, 0.0], np.float32)
    policy.override_intermediate({"target": far}, steps=1)
    moved = policy.act(obs)
    np.testing.assert_allclose(policy.intermediate["target"], far)
    assert policy.intermediate_overridden
    assert policy.intermediate_text().endswith(" ".join(f"{v:.2f}" for v in far))
    assert policy.predicted_intermediate["target"] is not far
    assert moved[0] > action[0] + 0.1  # steered toward the new target (+x)
    policy.act(obs)
    assert not policy.overridden
    with pytest.raises(ValueError, match="unknown procedure key"):
        policy.override_intermediate({"targte": far})
        policy.act(obs)


def test_episode_selection_checks_its_indices(store_path, tmp_path):
    config = pc_config(store_path, tmp_path / "e", "data.episodes=[0,1]")
    data = prepare_data(config, config.model)
    assert set(data.train.window_episodes.tolist()) <= {0, 1}
    with pytest.raises(ConfigError, match=r"episode\(s\) \[99\] do not exist"):
        prepare_data(pc_config(store_path, tmp_path / "f", "data.episodes=[99]"), config.model)


def test_experiment_runs_end_to_end_and_resumes(tmp_path):
    from il.experiments import ExperimentError, load, make_config

    module = load("pc-metaworld")
    overrides = [
        "tasks=[reach-v3]",
        "train_variations=[2]",
        "eval_seed=2",
        "eval_episodes=2",
        "max_episode_steps=100",
        "steps=20",
        "batch_size=16",
        "hidden=[16]",
        "head_hidden=[16]",
        "seeds=1",
    ]
    config = make_config(module, overrides)
    out = tmp_path / "exp"
    results = module.run(config, out)
    data = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in data["runs"]} == {"pc-metaworld", "aux-bc-metaworld", "bc"}
    assert data["expert"]["reach-v3"] == 1.0  # 100 steps are enough for the reach expert
    training = DemoStore.open(str(out / "data" / "2-variations.zarr")).episode_meta()
    assert sorted(training["seed"].tolist()) == [0, 1]
    text = results.read_text()
    assert "| pc-metaworld |" in text and (out / "success.png").stat().st_size > 0
    stamp = (out / "runs" / "bc" / "2-variations" / "seed0" / "result.json").stat().st_mtime
    module.run(config, out)  # resumes: nothing is trained again
    assert (out / "runs" / "bc" / "2-variations" / "seed0" / "result.json").stat().st_mtime == stamp
    with pytest.raises(ExperimentError, match="would replay training variations"):
        make_config(module, [*overrides, "eval_seed=1"])
    with pytest.raises(ExperimentError, match="unknown task"):
        make_config(module, ["tasks=[reach-v9]"])
