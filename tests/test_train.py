"""`il train` and learned-policy `il eval`: configs, checkpoints, resume, DDP, evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_MODELS, config_for
from safetensors.torch import load_file

import envs
from il.data.store import DemoStore
from il.evaluate import _episode_blocks, checkpoint_suite, evaluate_checkpoint
from il.policies.base import CheckpointError
from il.policies.registry import load_policy
from il.train import ConfigError, amp_dtype, load_config, train

IL = [sys.executable, "-m", "il.cli"]


def run_il(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*IL, *args], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env
    )


def test_train_writes_a_self_describing_run(store_path, tmp_path):
    out = tmp_path / "run"
    last = train(config_for(store_path, out, "model.action_horizon=4", "model.n_action_steps=2"))
    assert last.name == "step_0000040"
    assert (out / "checkpoints" / "last").resolve() == last.resolve()
    for name in ("config.yaml", "metrics.csv", "curves.png"):
        assert (out / name).stat().st_size > 0, name
    assert any((out / "tensorboard").iterdir())
    description = json.loads((last / "policy.json").read_text())
    assert description["policy"] == "bc" and description["step"] == 40
    assert description["spec"]["tasks"] == ["reach-v3", "push-v3"]
    assert description["spec"]["env"]["suite"] == "metaworld/MT10"
    assert set(load_file(str(last / "model.safetensors"))) >= {"head.0.weight"}
    metrics = (out / "metrics.csv").read_text()
    assert "val,loss" in metrics and "train,mse" in metrics


def test_checkpoint_round_trip_acts_identically(store_path, tmp_path):
    out = tmp_path / "run"
    last = train(config_for(store_path, out, "model.action_horizon=3", "model.n_action_steps=3"))
    a, b = load_policy(out), load_policy(last)
    for key in a.state_dict():
        assert torch.equal(a.state_dict()[key], b.state_dict()[key])
    env = envs.make("metaworld/push-v3")
    obs, _ = env.reset(seed=3)
    a.reset(task="push-v3")
    b.reset(task="push-v3")
    for _ in range(7):  # crosses a chunk boundary: queues must agree too
        action = a.act(obs)
        np.testing.assert_array_equal(action, b.act(obs))
        assert action.shape == (4,) and action.dtype == np.float32
        obs, *_ = env.step(action)
    env.close()


def test_resumed_run_matches_an_uninterrupted_one(store_path, tmp_path):
    straight = train(config_for(store_path, tmp_path / "straight"))

    def interrupt(step: int, metrics: dict) -> None:
        if step == 20:  # just after the checkpoint of step 20 was written
            raise KeyboardInterrupt

    config = config_for(store_path, tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        train(config, on_step=interrupt)
    resumed = train(config, resume=True)
    a = load_file(str(straight / "model.safetensors"))
    b = load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_start_hooks_run_on_a_fresh_run_only(store_path, tmp_path, monkeypatch):
    from il.policies.bc import BCPolicy

    started = []
    monkeypatch.setattr(BCPolicy, "on_train_start", lambda self: started.append(self))
    config = config_for(store_path, tmp_path / "run", "train.val_at_start=true")

    def interrupt(step: int, metrics: dict) -> None:
        if step == 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, on_step=interrupt)
    assert len(started) == 1
    train(config, resume=True)
    assert len(started) == 1  # a resumed run has its own weights: no second start
    val_steps = [
        int(line.split(",")[0])
        for line in (tmp_path / "run" / "metrics.csv").read_text().splitlines()
        if ",val,loss," in line
    ]
    assert val_steps == [0, 20, 40]  # the loss before the first step, once


def test_temporal_ensembling_acts(store_path, tmp_path):
    last = train(config_for(store_path, tmp_path / "run", "model.action_horizon=4"))
    policy = load_policy(last)
    policy.config.temporal_ensemble = 0.1
    policy.reset(task="reach-v3")
    env = envs.make("metaworld/reach-v3")
    obs, _ = env.reset(seed=0)
    actions = [policy.act(obs) for _ in range(5)]
    assert all(np.isfinite(a).all() and a.shape == (4,) for a in actions)
    env.close()


def test_eval_checkpoint_in_its_own_env(store_path, tmp_path):
    train(config_for(store_path, tmp_path / "run"))
    report = evaluate_checkpoint(tmp_path / "run", episodes_per_task=1, max_episode_steps=30)
    assert [t.task for t in report.tasks] == ["reach-v3", "push-v3"]
    assert all(len(t.episodes) == 1 for t in report.tasks)


def test_checkpoint_suite_resolves_tasks_as_the_suite_does():
    # `il eval` sizes its progress bar with this before any weights load, so a task named twice
    # (short and full form) counts once, as the evaluation itself will count it.
    trained = {"suite": "metaworld/MT10", "split": "train", "tasks": ["reach-v3", "push-v3"]}
    chosen = checkpoint_suite(trained, ["reach-v3", "push-v3"], tasks=["reach", "reach-v3"])
    assert chosen.task_names == ("reach-v3",)
    assert len(checkpoint_suite(trained, ["reach-v3", "push-v3"]).tasks) == 2
    assert len(checkpoint_suite({"suite": "metaworld/MT10"}, [], suite="metaworld/MT10")) == 10
    with pytest.raises(ValueError, match="not trained on pick-place-v3"):
        checkpoint_suite(trained, ["reach-v3", "push-v3"], suite="metaworld/MT10")
    with pytest.raises(ValueError, match="does not name its suite"):
        checkpoint_suite({}, [])


def test_eval_result_does_not_depend_on_the_number_of_workers(store_path, tmp_path):
    # A sampling policy (mixture head): each episode's draws come from its seed, not from the
    # process or the order in which a worker took its blocks of episodes.
    train(config_for(store_path, tmp_path / "run", "model.head=gmm"))
    runs = [
        evaluate_checkpoint(tmp_path / "run", episodes_per_task=5, max_episode_steps=25, workers=w)
        for w in (1, 2, 3)
    ]
    episodes = [[asdict(e) for t in r.tasks for e in t.episodes] for r in runs]
    assert [e["episode"] for e in episodes[0]] == [0, 1, 2, 3, 4] * 2
    assert episodes[0] == episodes[1] == episodes[2]
    assert runs[0].steps == runs[1].steps == runs[2].steps == sum(e["length"] for e in episodes[0])


def test_episode_blocks_cover_every_episode_once():
    for tasks, episodes, workers in [(10, 50, 2), (1, 20, 2), (50, 50, 2), (3, 7, 4), (2, 1, 8)]:
        blocks = _episode_blocks(tasks, episodes, workers)
        assert [k for b in blocks for k in b] == list(range(episodes))
        if workers > 1:  # a worker gets several jobs, so load balances across tasks
            assert tasks * len(blocks) >= min(tasks * episodes, 2 * workers)


def test_cli_train_then_eval(store_path, tmp_path):
    out = tmp_path / "cli"
    proc = run_il("train", "--data", store_path, "--out", str(out), "train.steps=10",
                  "train.batch_size=16", "model.hidden=[32]", "train.log_every=5")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    proc = run_il("eval", "--checkpoint", str(out), "--episodes-per-task", "1",
                  "--max-episode-steps", "20", "--json", str(tmp_path / "r.json"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "reach-v3" in proc.stdout
    assert json.loads((tmp_path / "r.json").read_text())["tasks"]["push-v3"]["episodes"]
    proc = run_il("eval", "--checkpoint", str(out), "--tasks", "push",
                  "--episodes-per-task", "1", "--max-episode-steps", "5", "--json",
                  str(tmp_path / "t.json"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert list(json.loads((tmp_path / "t.json").read_text())["tasks"]) == ["push-v3"]
    # How the policy acts can change at evaluation; what shapes its weights cannot.
    proc = run_il("eval", "--checkpoint", str(out), "--episodes-per-task", "1", "--env",
                  "metaworld/reach-v3", "--max-episode-steps", "5", "--json",
                  str(tmp_path / "g.json"), "model.gmm_act=best")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "model.gmm_act=best" in json.loads((tmp_path / "g.json").read_text())["policy"]
    proc = run_il("eval", "--checkpoint", str(out), "model.hidden=[8]")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "model.hidden cannot change" in proc.stderr


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.stepz=5"], "unknown config key 'train.stepz'; valid keys here: train.steps"),
        (["model.hidden=oops"], "bad config value for 'model.hidden'"),
        (["train.steps=many"], "bad config value for 'train.steps'"),
    ],
)
def test_bad_config_is_one_line(store_path, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").split(";")[0]):
        config_for(store_path, tmp_path / "x", *overrides)
    proc = run_il("train", "--data", store_path, "--out", str(tmp_path / "y"), *overrides)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", ["bc", "bc_image", "bc_mt50", "diffusion", "diffusion_mt50"])
def test_presets_load(name):
    # a preset with a stale key or a mistyped value would fail only when someone trains with it
    config = load_config(None, ROOT / "configs" / f"{name}.yaml")
    assert config.policy == name.split("_")[0] and config.train.steps > 0


def test_mt50_presets_change_only_what_they_say():
    # each MT50 preset extends its MT10 preset (base:), so a change there reaches both
    for name, changed in [
        ("bc", {"train.steps": 60000, "model.head": "mse", "model.obs_noise": 0.0}),
        (
            "diffusion",
            {"model.action_horizon": 8, "model.n_action_steps": 4, "model.cond_hidden": [512] * 3},
        ),
    ]:
        mt10 = load_config(None, ROOT / "configs" / f"{name}.yaml")
        mt50 = load_config(None, ROOT / "configs" / f"{name}_mt50.yaml")
        for key, value in changed.items():
            section, field = key.split(".")
            assert getattr(getattr(mt50, section), field) == value, key
            setattr(getattr(mt10, section), field, value)
        assert asdict(mt50) == asdict(mt10)


def test_yaml_base_chain(tmp_path):
    (tmp_path / "root.yaml").write_text(
        "policy: diffusion\ntrain: {steps: 100, lr: 0.01}\nmodel: {action_horizon: 16}\n"
    )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text(
        "base: ../root.yaml\ntrain: {steps: 200}\nmodel: {action_horizon: 8}\n"
    )
    child = tmp_path / "sub" / "child.yaml"
    config = load_config(None, child, ["train.lr=0.5"])
    assert config.policy == "diffusion"  # named by the base, not repeated
    assert (config.train.steps, config.train.lr, config.model.action_horizon) == (200, 0.5, 8)
    with pytest.raises(ConfigError, match="config for policy 'diffusion', not 'bc'"):
        load_config("bc", child)
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="extend each other in a loop"):
        load_config(None, tmp_path / "a.yaml")
    (tmp_path / "lost.yaml").write_text("base: gone.yaml\n")
    with pytest.raises(ConfigError, match=r"gone\.yaml does not exist"):
        load_config(None, tmp_path / "lost.yaml")
    (tmp_path / "bad.yaml").write_text("train: {steps: [1,\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(None, tmp_path / "bad.yaml")


def test_cli_takes_the_policy_from_the_config(store_path, tmp_path):
    # `il train --config preset.yaml` trains the preset's policy, and --resume keeps it
    preset = tmp_path / "tiny_diffusion.yaml"
    preset.write_text(f"base: {ROOT / 'configs' / 'diffusion.yaml'}\n")
    out = tmp_path / "run"
    tiny = [*TINY_MODELS["diffusion"], "train.batch_size=16", "train.save_every=2"]
    proc = run_il("train", "--config", str(preset), "--data", store_path, "--out", str(out),
                  "train.steps=2", *tiny)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "checkpoints" / "last" / "policy.json").read_text())["policy"] == (
        "diffusion"
    )
    proc = run_il("train", "--resume", "--out", str(out), "train.steps=4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "checkpoints" / "step_0000004").is_dir()
    assert load_policy(out).config.action_horizon == 4  # the run's config, not the preset's
    proc = run_il("train", "--policy", "bc", "--config", str(preset), "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "config for policy 'diffusion', not 'bc'" in proc.stderr


def test_amp_off_survives_yaml(store_path, tmp_path):
    # YAML 1.1 reads a bare `off` as false; the override must still mean float32
    config = config_for(store_path, tmp_path / "x", "train.amp=off")
    assert amp_dtype(config.train.amp, torch.device("cpu")) is None
    assert amp_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(ConfigError, match=r"train\.amp must be"):
        amp_dtype("fp8", torch.device("cpu"))


def test_bad_inputs_are_one_line(store_path, tmp_path):
    cases = [
        (["train", "--data", str(tmp_path / "none.zarr")], "no store at"),
        (["train", "--data", store_path, "data.obs=[obs/image/corner]"], "has no key"),
        (["train", "--policy", "nope", "--data", store_path], "unknown policy 'nope'"),
        (["eval", "--checkpoint", str(tmp_path)], "no checkpoint at"),
        (["eval"], "give either --checkpoint"),
        (["eval", "--policy", "expert", "--tasks", "reach-v2"], "did you mean 'reach-v3'"),
        (["eval", "--policy", "expert", "--tasks", ","], "--tasks names no task"),
    ]
    for args, message in cases:
        proc = run_il(*args, "--out", str(tmp_path / "o")) if args[0] == "train" else run_il(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1


def test_damaged_checkpoint_is_a_clear_error(store_path, tmp_path):
    last = train(config_for(store_path, tmp_path / "run"))
    (last / "model.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_policy(last)
    description = json.loads((last / "policy.json").read_text())
    description["policy"] = "nope"
    (last / "policy.json").write_text(json.dumps(description))
    with pytest.raises(CheckpointError, match="does not know"):
        load_policy(last)


def test_ddp_with_gloo_on_two_processes(store_path, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
        "-m", "il.cli", "train", "--data", store_path, "--out", str(out), "train.steps=12",
        "train.batch_size=16", "model.hidden=[32]", "train.log_every=4", "train.device=cpu",
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "checkpoints" / "last" / "policy.json").exists()
    assert load_policy(out).spec.tasks == ["reach-v3", "push-v3"]
    assert DemoStore.open(store_path).num_episodes == 8
