"""Inverse-dynamics pretraining: the encoder block, each objective's loss on a tiny batch, the
held-out split, and the whole pretrain → fine-tune → checkpoint pipeline on a tiny store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import envs
from il.experiments import ExperimentError, load, make_config
from il.methods.id_pretraining.pretraining import (
    OBJECTIVES,
    FewShotConfig,
    Frames,
    PretrainConfig,
    Pretrainer,
    PretrainError,
    fewshot,
    load_options,
    pretrain,
)
from il.policies.blocks import ConvKeypointEncoder, random_crop
from il.policies.registry import load_policy
from il.record import record_expert

TINY = ["encoder.channels=[8,8,8,8]", "encoder.features=16", "hidden=[32]", "encoder.crop_pad=2"]


def test_encoder_shapes_range_and_crop_only_in_training() -> None:
    encoder = ConvKeypointEncoder(out_dim=16, channels=(8, 8, 8, 8))
    images = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    z = encoder(images)
    assert z.shape == (3, 16)
    assert z.abs().max() < 1  # tanh
    encoder.eval()
    assert torch.equal(encoder(images), encoder(images))  # no augmentation at evaluation


def test_random_crop_shifts_within_the_padding() -> None:
    image = torch.arange(36.0).reshape(1, 1, 6, 6).repeat(16, 1, 1, 1)
    cropped = random_crop(image, 1)
    assert cropped.shape == image.shape
    # every output is the input shifted by at most one pixel, edges replicated
    padded = torch.nn.functional.pad(image[:1], (1, 1, 1, 1), mode="replicate")[0, 0]
    windows = {
        tuple(padded[y : y + 6, x : x + 6].flatten().tolist()) for y in range(3) for x in range(3)
    }
    assert all(tuple(c[0].flatten().tolist()) in windows for c in cropped)
    assert len({tuple(c[0].flatten().tolist()) for c in cropped}) > 1


def _synthetic_frames(n_episodes: int = 2, length: int = 8, size: int = 24) -> Frames:
    """Frames whose content moves with the action, so every objective has something to fit."""
    g = torch.Generator().manual_seed(0)
    actions = torch.rand(n_episodes * length, 4, generator=g) * 2 - 1
    images = torch.zeros(n_episodes * length, size, size, 3, dtype=torch.uint8)
    for i, a in enumerate(actions):
        y, x = int((a[0] + 1) * (size - 5) / 2), int((a[1] + 1) * (size - 5) / 2)
        images[i, y : y + 4, x : x + 4] = 255
    ends = np.arange(1, n_episodes + 1) * length
    return Frames(images, actions, actions.clone(), ends - length, ends, ["a"])


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_each_objective_fits_a_tiny_batch(objective: str) -> None:
    config = load_options(PretrainConfig, None, [f"objective={objective}", *TINY])
    torch.manual_seed(0)
    frames = _synthetic_frames(size=16)
    model = Pretrainer(config, image_size=16, action_dim=4)
    anchors = torch.from_numpy(frames.anchors(model.gap)[:8])
    loss = model.loss(frames, anchors)
    assert loss.shape == () and torch.isfinite(loss)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.eval()  # no dropout or crop: a fixed batch must be fitted
    first = float(model.loss(frames, anchors).detach())
    for _ in range(25):
        loss = model.loss(frames, anchors)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(model.loss(frames, anchors).detach()) < 0.8 * first


def test_id_pairs_never_cross_an_episode() -> None:
    frames = _synthetic_frames(n_episodes=3, length=5)
    anchors = frames.anchors(3)
    episode = np.searchsorted(frames.ends, anchors, side="right")
    assert len(anchors) == 3 * 2
    assert np.all(anchors + 3 < frames.ends[episode])


def test_config_errors_are_one_line() -> None:
    with pytest.raises(PretrainError, match="unknown objective 'inverse'"):
        load_options(PretrainConfig, None, ["objective=inverse"])
    with pytest.raises(PretrainError, match="unknown key 'stepz'"):
        load_options(PretrainConfig, None, ["stepz=3"])
    with pytest.raises(PretrainError, match="frame_gap"):
        load_options(PretrainConfig, None, ["frame_gap=0"])


def test_config_files_extend_and_fail_in_one_line(tmp_path) -> None:
    # the flat-config verbs read YAML as il train does: base: chains, one-line errors
    (tmp_path / "root.yaml").write_text("steps: 77\nframe_gap: 2\n")
    (tmp_path / "child.yaml").write_text("base: root.yaml\nframe_gap: 3\n")
    config = load_options(PretrainConfig, tmp_path / "child.yaml", [])
    assert (config.steps, config.frame_gap) == (77, 3)
    (tmp_path / "bad.yaml").write_text("steps: [1,\n")
    with pytest.raises(PretrainError, match="is not valid YAML"):
        load_options(PretrainConfig, tmp_path / "bad.yaml", [])
    with pytest.raises(PretrainError, match="does not exist"):
        load_options(PretrainConfig, tmp_path / "none.yaml", [])


def test_the_experiment_refuses_a_leaking_split() -> None:
    module = load("id-door")
    with pytest.raises(ExperimentError, match="door-lock-v3 is one of pretrain_tasks"):
        make_config(module, ["pretrain_tasks=[door-open-v3,door-lock-v3]"])
    with pytest.raises(ExperimentError, match="overlap"):
        make_config(module, ["demo_seed=10"])


def _synthetic_store(path: Path, tasks: list[str], episodes: int = 3, length: int = 12) -> str:
    """A store of moving-square frames without an env (fast): each task a few episodes."""
    from il.data.store import DemoStore, KeySpec, StoreSchema

    keys = {
        "obs/state": KeySpec((39,), "float32"),
        "obs/image/corner": KeySpec((16, 16, 3), "uint8"),
        "action": KeySpec((4,), "float32"),
        "executed_action": KeySpec((4,), "float32"),
    }
    source = {"env": "metaworld", "suite": "metaworld/MT50", "split": "train", "image_size": 16}
    store = DemoStore.create(path, StoreSchema(keys, fps=80.0, source=source))
    rng = np.random.default_rng(0)
    for task in tasks:
        for seed in range(episodes):
            frames = _synthetic_frames(1, length, 16)
            store.add_episode(
                {
                    "obs/state": rng.normal(size=(length, 39)).astype(np.float32),
                    "obs/image/corner": frames.images.numpy(),
                    "action": frames.actions.numpy(),
                    "executed_action": frames.executed.numpy(),
                },
                task=task,
                instruction="",
                success=True,
                seed=seed,
                source="expert",
            )
    store.close()
    return str(path)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("id")
    pre = _synthetic_store(root / "pre.zarr", ["door-open-v3", "door-unlock-v3"])
    lock = _synthetic_store(root / "lock.zarr", ["door-lock-v3"], episodes=2)
    return pre, lock


@pytest.fixture(scope="module")
def door_stores(tmp_path_factory) -> tuple[str, str]:
    """Two pretraining tasks and the held-out door-lock, 32 px, a few expert episodes each."""
    root = tmp_path_factory.mktemp("door")
    mt50 = envs.suite("metaworld/MT50")
    pre = type(mt50)(
        mt50.name,
        mt50.split,
        tuple(t for t in mt50.tasks if t.name in ("door-open-v3", "door-unlock-v3")),
    )
    common = dict(obs=("state", "image/corner"), image_size=32, max_episode_steps=100, workers=2)
    record_expert(pre, str(root / "pre.zarr"), episodes_per_task=3, action_noise=0.1, **common)
    lock = envs.suite("metaworld/MT1/door-lock-v3")
    record_expert(
        lock, str(root / "lock.zarr"), episodes_per_task=2, seed=25, only_success=True, **common
    )
    return str(root / "pre.zarr"), str(root / "lock.zarr")


@pytest.mark.slow
def test_pipeline_pretrains_lowers_held_out_id_loss_and_fine_tunes(door_stores, tmp_path) -> None:
    pre, lock = door_stores
    common = [f"data={pre}", "camera=obs/image/corner", "batch_size=32", "lr=3e-3", *TINY]
    encoder = pretrain(
        load_options(
            PretrainConfig,
            None,
            [*common, f"out={tmp_path / 'enc'}", "steps=60", "val_fraction=0.34", "seed=1"],
        )
    )
    described = json.loads((encoder / "encoder.json").read_text())
    assert described["pretraining_tasks"] == ["door-open-v3", "door-unlock-v3"]
    metrics = described["metrics"]
    assert metrics["val_loss_end"] < metrics["val_loss_start"]

    out = tmp_path / "ft"
    fewshot(
        load_options(
            FewShotConfig,
            None,
            [f"encoder={encoder}", f"data={lock}", f"out={out}", "demos=2", "steps=30"],
        )
    )
    policy = load_policy(out)  # an ordinary checkpoint, frozen encoder included
    assert policy.spec.env["tasks"] == ["door-lock-v3"]
    assert policy.spec.env["image_size"] == 32
    env = envs.make("metaworld/door-lock-v3", obs=("image/corner",), image_size=32)
    obs, _ = env.reset(seed=0)
    policy.reset()
    action = policy.act(obs)
    assert action.shape == (4,) and np.all(np.isfinite(action))
    env.close()


def test_fine_tuning_refuses_a_task_of_the_pretraining_data(stores, tmp_path) -> None:
    pre, _lock = stores
    encoder = pretrain(
        load_options(
            PretrainConfig,
            None,
            [
                f"data={pre}",
                f"out={tmp_path / 'enc'}",
                "camera=obs/image/corner",
                "steps=1",
                "batch_size=4",
                *TINY,
            ],
        )
    )
    with pytest.raises(PretrainError, match="fine-tune task door-open-v3 is in the pretraining"):
        fewshot(
            load_options(
                FewShotConfig,
                None,
                [
                    f"encoder={encoder}",
                    f"data={pre}",
                    "task=door-open-v3",
                    "demos=1",
                    f"out={tmp_path / 'ft'}",
                ],
            )
        )
    with pytest.raises(PretrainError, match="held-out task door-open-v3 is in the pretraining"):
        pretrain(
            load_options(
                PretrainConfig,
                None,
                [f"data={pre}", f"out={tmp_path / 'e2'}", "held_out=[door-open-v3]", *TINY],
            )
        )


@pytest.mark.parametrize("reference", ["scratch", "state"])
def test_references_make_ordinary_checkpoints(stores, tmp_path, reference: str) -> None:
    _pre, lock = stores
    out = tmp_path / reference
    fewshot(
        load_options(
            FewShotConfig,
            None,
            [
                f"encoder={reference}",
                f"data={lock}",
                f"out={out}",
                "demos=2",
                "steps=5",
                "scratch_steps=3",
                "batch_size=8",
                "camera=obs/image/corner",
                "scratch_encoder.channels=[8,8,8,8]",
            ],
        )
    )
    policy = load_policy(out)
    key = "obs/state" if reference == "state" else "obs/image/corner"
    assert list(policy.spec.obs_shapes) == [key]
    assert policy.config.objective == reference


def test_cli_pretrain_reports_a_missing_camera_in_one_line(stores, tmp_path) -> None:
    from click.testing import CliRunner

    from il.cli import app

    pre, _ = stores
    result = CliRunner().invoke(
        app,
        [
            "pretrain",
            "--objective",
            "id",
            "--data",
            pre,
            "--out",
            str(tmp_path / "e"),
            "camera=obs/image/topview",
        ],
    )
    assert result.exit_code != 0
    assert "has no 'obs/image/topview'" in str(result.exception) + result.output


def test_experiment_registered() -> None:
    config = make_config(load("id-door"))
    assert config.finetune_task not in config.pretrain_tasks
    assert Path(load("id-door").__file__).name == "id_door.py"
