"""Learning from corrections: the simulated corrector of RT-H's protocol (METHODS §2b) in
`il eval --intervene`, the correction stores `--record` writes, and the fine-tunes that read
them (`rth-intervene`: the motion head only; `flat-iwr`: intervention-weighted regression)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import envs
from il.data.store import DemoStore
from il.evaluate import evaluate_checkpoint
from il.interventions import InterveneSpec, intervention_statistics
from il.methods.rth.corrections import MotionOracle
from il.methods.rth.iwr import intervention_weights
from il.policies.registry import load_policy
from il.record import record_expert
from il.train import ConfigError, finetune_config, load_config, train

ROOT = Path(__file__).resolve().parents[1]
IL = [sys.executable, "-m", "il.cli"]
TASKS = ["reach-v3", "drawer-close-v3"]
SHORT = [
    "train.batch_size=64",
    "train.warmup_steps=20",
    "train.log_every=50",
    "train.val_fraction=0",
    "train.threads=1",
]


def _train(policy: str, store: str, out: Path, *overrides: str) -> Path:
    threads = torch.get_num_threads()
    try:
        train(load_config(policy, None, [f"data.path={store}", f"out={out}", *SHORT, *overrides]))
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("corr") / "demos.zarr")
    suite = envs.suite("metaworld/MT10").subset(TASKS)
    record_expert(suite, path, episodes_per_task=4, workers=1)
    return path


@pytest.fixture(scope="module")
def rth_run(demos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corr") / "rth"
    return _train(
        "rth", demos, out, "train.steps=600", "model.hidden=[64,64]", "model.motion_hidden=[64]"
    )


@pytest.fixture(scope="module")
def bc_run(demos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corr") / "bc"
    return _train("bc", demos, out, "train.steps=400", "model.hidden=[64,64]")


@pytest.fixture(scope="module")
def corrections(rth_run, tmp_path_factory) -> tuple[str, object]:
    store = str(tmp_path_factory.mktemp("corr") / "corrections.zarr")
    report = evaluate_checkpoint(
        rth_run,
        episodes_per_task=3,
        intervene=("expert-motion", InterveneSpec(patience=2, hold=4)),
        record=store,
    )
    return store, report


# --- the oracle ----------------------------------------------------------------------------------
def test_the_oracle_leaves_the_episode_as_it_was():
    """Asking the oracle at every step (it steps the expert ahead and back) changes nothing:
    the observations and successes are those of a rollout that never asked."""
    suite = envs.suite("metaworld/MT10").subset(["drawer-close-v3"])
    task = suite.tasks[0]
    runs = []
    for ask in (False, True):
        env = suite.make(task.name, obs=("state",), max_episode_steps=60)
        oracle = MotionOracle(task)
        obs, _ = env.reset(seed=3)
        trace = []
        for _ in range(60):
            if ask:
                oracle(env, obs)
            obs, reward, _, _, info = env.step(oracle.expert.act(obs)[0])
            trace.append((obs["state"].copy(), reward, info["success"]))
        env.close()
        runs.append(trace)
    for (a, ra, sa), (b, rb, sb) in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)
        # the restored state's derived quantities come from mj_forward rather than the end of
        # mj_step: the shaped reward may differ in its last bits, nothing else
        assert ra == pytest.approx(rb, rel=1e-12, abs=1e-12) and sa == sb


def test_the_oracle_speaks_as_the_recordings_are_labelled(demos):
    """On the expert's own states the oracle's phrase is the recording's label: the same
    expert, the same look-ahead, the same labeller."""
    store = DemoStore.open(demos)
    vocabulary = [str(p) for p in store.schema.source["language_motion_vocabulary"]]
    suite = envs.suite("metaworld/MT10").subset(TASKS)
    meta = store.episode_meta()
    agree = total = 0
    for i in (0, store.num_episodes - 1):
        task = next(t for t in suite.tasks if t.name == str(meta["task"][i]))
        steps = store.read_episode(i, ["language_motion", "action"])
        env = suite.make(task.name, obs=("state",))
        oracle = MotionOracle(task)
        obs, _ = env.reset(seed=int(meta["seed"][i]))
        for t in range(len(steps["action"]) - oracle.labelling.window):  # full windows only
            phrase, _ = oracle(env, obs)
            agree += vocabulary.index(phrase) == int(steps["language_motion"][t])
            total += 1
            obs, *_ = env.step(steps["action"][t])
        env.close()
    assert agree == total, (agree, total)


# --- correcting in words -------------------------------------------------------------------------
def test_corrections_follow_the_protocol_and_are_recorded(corrections):
    """Every step stores what the policy predicted and what the expert would do; a correction
    starts after `patience` disagreeing steps, lasts `hold` steps and gives the expert's phrase;
    the episodes with one are source=intervention."""
    path, report = corrections
    store = DemoStore.open(path)
    assert store.num_episodes == 6 and report.interventions > 0
    assert store.schema.source["intervener"] == "expert-motion"
    assert store.schema.source["intervene"] == {"patience": 2, "hold": 4}
    meta = store.episode_meta()
    total = 0
    for i in range(store.num_episodes):
        steps = store.read_episode(i)
        flags = steps["intervention"]
        expected, disagreeing, holding = [], 0, 0
        for predicted, said in zip(steps["predicted_motion"], steps["expert_motion"], strict=True):
            if holding:
                expected.append(True)
                holding -= 1
                continue
            expected.append(False)
            disagreeing = 0 if predicted == said else disagreeing + 1
            if disagreeing >= 2:
                holding, disagreeing = 4, 0
        np.testing.assert_array_equal(flags, expected)
        np.testing.assert_array_equal(
            steps["corrected_motion"], np.where(flags, steps["expert_motion"], -1)
        )
        # a corrected step is read from the correction, which the action head then executes
        assert (steps["predicted_motion"][flags] >= 0).all()
        assert str(meta["source"][i]) == ("intervention" if flags.any() else "policy")
        total += int(flags.sum())
    assert total == report.interventions
    stats = intervention_statistics(store)
    assert stats["steps"] == total and stats["by"] == "expert-motion"
    assert sum(stats["phrases"].values()) == total
    proc = subprocess.run([*IL, "info", path], capture_output=True, text=True, cwd=ROOT)
    assert f"interventions: {total} steps" in proc.stdout, proc.stdout[-800:]


def test_a_corrected_policy_acts_on_the_phrase_given(rth_run):
    """The hook: a correction reaches the policy as its intermediate output, marked as such."""
    suite = envs.suite("metaworld/MT10").subset(["drawer-close-v3"])
    task = suite.tasks[0]
    policy = load_policy(rth_run)
    policy.reset(task=task.name)
    env = suite.make(task.name, obs=("state",))
    obs, _ = env.reset(seed=0)
    oracle = MotionOracle(task)
    phrase, _ = oracle(env, obs)
    policy.override_intermediate(phrase, steps=1)
    policy.act(obs)
    assert policy.intermediate == phrase and policy.intermediate_overridden
    env.close()


def test_a_recording_run_again_plays_only_what_is_missing(rth_run, corrections, tmp_path):
    path, report = corrections
    before = DemoStore.open(path).num_episodes
    again = evaluate_checkpoint(
        rth_run,
        episodes_per_task=3,
        intervene=("expert-motion", InterveneSpec(patience=2, hold=4)),
        record=path,
    )
    assert DemoStore.open(path).num_episodes == before and again.steps == 0
    assert again.interventions == report.interventions
    assert again.success_rate == report.success_rate


# --- fine-tuning ---------------------------------------------------------------------------------
def test_rth_intervene_changes_only_the_motion_head(rth_run, corrections, tmp_path):
    path, _ = corrections
    config = finetune_config(
        "rth-intervene",
        rth_run,
        None,
        [f"data.path={path}", f"out={tmp_path / 'ft'}", *SHORT, "train.steps=60", "train.lr=0.01"],
    )
    assert config.model.hidden == [64, 64]  # the checkpoint's model, not the preset's
    folder = train(config)
    before = load_file(str(rth_run / "checkpoints" / "last" / "model.safetensors"))
    after = load_file(str(folder / "model.safetensors"))
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("motion_head.") for k in changed), sorted(changed)[:5]
    assert len(changed) == len([k for k in before if k.startswith("motion_head.")])
    tuned = load_policy(folder)
    assert tuned.name == "rth-intervene" and tuned.vocabulary == load_policy(rth_run).vocabulary


def test_flat_iwr_fine_tunes_bc_on_takeovers(bc_run, tmp_path):
    store = str(tmp_path / "takeovers.zarr")
    report = evaluate_checkpoint(
        bc_run,
        episodes_per_task=2,
        intervene=("expert-takeover", InterveneSpec(patience=1, hold=3)),
        record=store,
    )
    steps = DemoStore.open(store).read_episode(0)
    flags = steps["intervention"]
    assert report.interventions > 0
    np.testing.assert_array_equal(steps["action"][flags], steps["expert_action"][flags])
    config = finetune_config(
        "flat-iwr",
        bc_run,
        None,
        [f"data.path={store}", f"out={tmp_path / 'iwr'}", *SHORT, "train.steps=30"],
    )
    folder = train(config)
    before = load_file(str(bc_run / "checkpoints" / "last" / "model.safetensors"))
    after = load_file(str(folder / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    tuned = evaluate_checkpoint(folder, episodes_per_task=1)
    assert tuned.policy.startswith("flat-iwr")


def test_intervention_weights_give_the_corrections_their_share():
    weights = intervention_weights(torch.tensor([True, False, False, False]), 0.5)
    torch.testing.assert_close(weights, torch.tensor([0.5, 1 / 6, 1 / 6, 1 / 6]))
    only_own = intervention_weights(torch.tensor([False, False]), 0.5)
    torch.testing.assert_close(only_own, torch.tensor([0.5, 0.5]))


# --- one line for what does not fit --------------------------------------------------------------
def test_mismatches_are_one_line(rth_run, bc_run, corrections, tmp_path):
    path, _ = corrections
    with pytest.raises(ConfigError, match="flat-iwr fine-tunes a bc policy"):
        finetune_config("flat-iwr", rth_run, None, [f"data.path={path}"])
    with pytest.raises(ConfigError, match="does not fine-tune a checkpoint"):
        finetune_config("bc", bc_run, None, [f"data.path={path}"])
    with pytest.raises(ConfigError, match="il finetune --method rth-intervene"):
        train(load_config("rth-intervene", None, [f"data.path={path}", f"out={tmp_path / 'x'}"]))
    runs = [
        [*IL, "eval", "--checkpoint", str(bc_run), "--intervene", "expert-motion"],
        [*IL, "eval", "--policy", "expert", "--intervene", "expert-takeover"],
        [*IL, "eval", "--checkpoint", str(rth_run), "--intervene", "nobody"],
        [
            *IL,
            "finetune",
            "--method",
            "rth-intervene",
            "--checkpoint",
            str(bc_run),
            "--data",
            path,
            "--out",
            str(tmp_path / "y"),
        ],
    ]
    for command in runs:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-1500:]
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "y").exists()


# --- the experiment ------------------------------------------------------------------------------
def test_experiment_rth_writes_every_table_and_resumes(tmp_path):
    """`il experiment rth` at a toy size: every stage runs, the tables and the chart are
    written, and a second invocation finds every run finished."""
    from il.experiments import load, make_config

    module = load("rth")
    config = make_config(
        module,
        [
            "tasks=[reach-v3]",
            "demos_per_task=2",
            "heldout_demos=1",
            "eval_episodes=1",
            "correction_episodes=1",
            "steps=40",
            "finetune_steps=10",
            "hidden=[32]",
            "motion_hidden=[32]",
            "seeds=1",
            "workers=1",
            "threads=1",
        ],
    )
    out = tmp_path / "rth"
    threads = torch.get_num_threads()
    try:
        results = module.run(config, out)
        text = results.read_text()
        for section in (
            "Success",
            "Held-out action error",
            "Online correction",
            "Learning from corrections",
            "rth-intervene",
            "flat-iwr",
        ):
            assert section in text, section
        assert (out / "success.png").stat().st_size > 0
        runs = json.loads((out / "results.json").read_text())["runs"]
        assert {r["method"] for r in runs} == {"rth", "bc"}
        rth = next(r for r in runs if r["method"] == "rth")
        assert 0 <= rth["success_heldout_corrected"] <= 1 and rth["heldout_action_mse"] > 0
        assert rth["tasks_training_corrected"].keys() == {"reach-v3"}
        assert "Weakest tasks on the held-out variations with the corrector: reach-v3" in text
        stamp = (out / "runs" / "rth" / "seed0" / "result.json").stat().st_mtime_ns
        module.run(config, out)
        assert (out / "runs" / "rth" / "seed0" / "result.json").stat().st_mtime_ns == stamp
    finally:
        torch.set_num_threads(threads)
