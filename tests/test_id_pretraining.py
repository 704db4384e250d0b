"""Inverse-dynamics pretraining: the encoder block, each objective's loss on a tiny batch, the
held-out split, and the whole pretrain → fine-tune → checkpoint pipeline on a tiny store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import envs
from il.data.normalize import Normalizer
from il.data.sampler import WindowSampler, window_spec
from il.data.store import DemoStore
from il.experiments import ExperimentError, load, make_config
from il.methods.id_pretraining.objectives import (
    OBJECTIVES,
    EncoderPretraining,
    EncoderPretrainingConfig,
    pairs_used,
)
from il.methods.id_pretraining.pipeline import (
    FewShotConfig,
    PretrainConfig,
    PretrainError,
    fewshot,
    load_options,
    pretrain,
    pretraining_metrics,
)
from il.policies.base import DataSpec, read_description
from il.policies.blocks import ConvKeypointEncoder, random_crop
from il.policies.registry import load_policy
from il.record import record_expert

CAMERA = "obs/image/corner"
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


def _synthetic_frames(
    n_episodes: int = 2, length: int = 8, size: int = 24
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames (`n h w c` uint8) whose content moves with the action (`n 4`), so every objective
    has something to fit."""
    g = torch.Generator().manual_seed(0)
    actions = torch.rand(n_episodes * length, 4, generator=g) * 2 - 1
    images = torch.zeros(n_episodes * length, size, size, 3, dtype=torch.uint8)
    for i, a in enumerate(actions):
        y, x = int((a[0] + 1) * (size - 5) / 2), int((a[1] + 1) * (size - 5) / 2)
        images[i, y : y + 4, x : x + 4] = 255
    return images, actions


def _pair_batch(images: torch.Tensor, actions: torch.Tensor, t: list[int], gap: int) -> dict:
    """The windows the sampler makes for anchors `t`: frames (t, t+gap), the action at t."""
    index = torch.tensor(t)
    return {
        CAMERA: torch.stack([images[index], images[index + gap]], dim=1),  # b 2 h w c
        f"{CAMERA}_is_pad": torch.zeros(len(t), 2, dtype=torch.bool),
        "action": actions[index][:, None],
        "action_is_pad": torch.zeros(len(t), 1, dtype=torch.bool),
    }


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_each_objective_fits_a_tiny_batch(objective: str) -> None:
    config = load_options(EncoderPretrainingConfig, None, [f"objective={objective}", *TINY])
    torch.manual_seed(0)
    images, actions = _synthetic_frames(size=16)
    spec = DataSpec(obs_shapes={CAMERA: [16, 16, 3]}, action_dim=4)
    model = EncoderPretraining(config, spec, Normalizer({}, {}))
    # the first 8 pairs (t, t+1) inside the two episodes of 8 steps
    batch = _pair_batch(images, actions, [0, 1, 2, 3, 4, 5, 6, 8], gap=1)
    loss, _ = model.loss(batch)
    assert loss.shape == () and torch.isfinite(loss)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.eval()  # no dropout or crop: a fixed batch must be fitted
    first = float(model.loss(batch)[0].detach())
    for _ in range(25):
        loss, _ = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(model.loss(batch)[0].detach()) < 0.8 * first


def test_id_pairs_never_cross_an_episode(tmp_path) -> None:
    store = _synthetic_store(tmp_path / "s.zarr", ["a"], episodes=3, length=5)
    config = EncoderPretrainingConfig(objective="id", frame_gap=3)
    keys = window_spec([CAMERA], 1, ["action"], 1, EncoderPretraining.extra_keys(config))
    sampler = WindowSampler(store, keys)
    windows = {k: torch.from_numpy(v) for k, v in sampler.batch(np.arange(len(sampler))).items()}
    used = np.flatnonzero(pairs_used(windows, CAMERA).numpy())  # what the loss learns from
    pairs = np.array([sampler.steps(int(i), CAMERA)[0][[0, -1]] for i in used])  # (t, t+3)
    anchors, ends = pairs[:, 0], DemoStore.open(store).episode_ends
    episode = np.searchsorted(ends, anchors, side="right")
    assert len(anchors) == 3 * 2
    assert np.all(anchors + 3 < ends[episode])
    assert np.all(pairs[:, 1] == anchors + 3)


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
    with pytest.raises(ExperimentError, match="demo_pool=5 is smaller than demos=10"):
        make_config(module, ["demo_pool=5"])


def test_each_seed_draws_its_own_demos_from_the_pool() -> None:
    from il.methods.id_pretraining.pipeline import draw_demos

    config = make_config(load("id-door"), [])
    pool = np.arange(config.demo_pool)
    draws = {tuple(draw_demos(pool, n, seed)) for n in config.demos for seed in range(config.seeds)}
    assert len(draws) == len(config.demos) * config.seeds  # no two seeds share their demos
    assert all(len(set(d)) == len(d) for d in draws)


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
            images, actions = _synthetic_frames(1, length, 16)
            store.add_episode(
                {
                    "obs/state": rng.normal(size=(length, 39)).astype(np.float32),
                    "obs/image/corner": images.numpy(),
                    "action": actions.numpy(),
                    "executed_action": actions.numpy(),
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
    described = read_description(encoder)  # the run's checkpoint is the encoder checkpoint
    assert described["spec"]["env"]["tasks"] == ["door-open-v3", "door-unlock-v3"]
    metrics = pretraining_metrics(encoder)  # the held-out loss at step 0 and at the end
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


def _tiny_encoder(pre: str, out: Path) -> Path:
    options = [f"data={pre}", f"out={out}", "steps=2", "batch_size=4", "seed=3", *TINY]
    return pretrain(load_options(PretrainConfig, None, options))


def test_the_encoder_checkpoint_loads_but_cannot_act(stores, tmp_path) -> None:
    from click.testing import CliRunner

    from il.cli import app

    pre, _lock = stores
    run = _tiny_encoder(pre, tmp_path / "enc")
    encoder = load_policy(run)  # an ordinary, self-describing checkpoint
    assert isinstance(encoder, EncoderPretraining)
    assert encoder.config.objective == "id" and encoder.config.encoder.features == 16
    assert encoder.config.action_key == "executed_action"  # the store records it
    assert sorted(encoder.spec.env["tasks"]) == ["door-open-v3", "door-unlock-v3"]
    with pytest.raises(RuntimeError, match="il fewshot --encoder"):
        encoder.act({"image/corner": np.zeros((16, 16, 3), np.uint8)})
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(run)])
    assert result.exit_code != 0
    message = str(result.exception) + result.output
    assert "cannot act" in message and "il fewshot --encoder" in message
    assert len(str(result.exception).strip().splitlines()) == 1


def test_fine_tuning_loads_the_encoder_and_keeps_it_frozen(stores, tmp_path) -> None:
    pre, lock = stores
    run = _tiny_encoder(pre, tmp_path / "enc")
    options = [f"encoder={run}", f"data={lock}", f"out={tmp_path / 'ft'}", "demos=2"]
    fewshot(load_options(FewShotConfig, None, [*options, "steps=4", "batch_size=8"]))
    pretrained, tuned = load_policy(run), load_policy(tmp_path / "ft")
    assert tuned.config.objective == "id" and tuned.config.pretraining_tasks
    for key, value in pretrained.encoder.state_dict().items():
        assert torch.equal(tuned.encoder.state_dict()[key], value), key
    elsewhere = [f"data={lock}", f"out={tmp_path / 'ft2'}"]
    with pytest.raises(PretrainError, match="is a pretrained-bc checkpoint, not an encoder"):
        fewshot(load_options(FewShotConfig, None, [f"encoder={tmp_path / 'ft'}", *elsewhere]))
    with pytest.raises(PretrainError, match="no encoder checkpoint at"):
        fewshot(load_options(FewShotConfig, None, [f"encoder={tmp_path}", *elsewhere]))


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
