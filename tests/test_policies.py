"""Diffusion Policy, the ResNet-18 image encoder and text task conditioning; the same
interface as BC, so they train, save, load, act and evaluate through the same code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import config_for
from einops import rearrange
from safetensors.torch import load_file

import envs
from il.data.store import DemoStore
from il.evaluate import evaluate_checkpoint
from il.policies import text
from il.policies.blocks import ObservationEncoder, ResNet18, TaskConditioning
from il.policies.diffusion import ConditionalUnet1D, NoiseSchedule
from il.policies.registry import load_policy
from il.train import ConfigError, batch_at, prepare_data, train


def test_ddim_recovers_the_clean_sample_from_the_true_noise():
    schedule = NoiseSchedule(100)
    x0 = torch.rand(3, 8, 4) * 2 - 1
    noise = torch.randn_like(x0)
    for t in (99, 50, 3):
        xt = schedule.add_noise(x0, noise, torch.full((3,), t))
        # With the exact noise, one deterministic DDIM jump to t = -1 lands on x0.
        x = schedule.ddim_step(xt, noise, t, -1)
        torch.testing.assert_close(x, x0, atol=1e-3, rtol=0)  # float32 at tiny alpha_bar
        # A network that predicts the clean sample lands there too, and a jump to an
        # intermediate step matches the one taken from the true noise.
        torch.testing.assert_close(schedule.ddim_step(xt, x0, t, -1, prediction="sample"), x0)
        if t > 10:
            from_noise = schedule.ddim_step(xt, noise, t, t - 10)
            from_sample = schedule.ddim_step(xt, x0, t, t - 10, prediction="sample")
            torch.testing.assert_close(from_sample, from_noise, atol=1e-3, rtol=0)
    assert schedule.timesteps(10) == [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]
    alpha_bar = schedule.alpha_bar
    assert alpha_bar[0] > 0.99 and alpha_bar[-1] < 1e-3 and bool((alpha_bar.diff() < 0).all())


@pytest.mark.parametrize("horizon", [4, 8, 16])
def test_unet_keeps_the_chunk_shape(horizon):
    unet = ConditionalUnet1D(4, 10, down_dims=[16, 32, 64], step_embedding=16, groups=4)
    x = torch.randn(2, horizon, 4)
    out = unet(x, torch.tensor([0, 7]), torch.randn(2, 10))
    assert out.shape == x.shape


@pytest.mark.parametrize(
    ("prediction", "cond_hidden"), [("epsilon", []), ("sample", []), ("sample", [32, 16])]
)
def test_diffusion_trains_saves_loads_and_acts(store_path, tmp_path, prediction, cond_hidden):
    out = tmp_path / "run"
    overrides = (
        "train.steps=150",
        "train.lr=3e-3",
        f"model.prediction={prediction}",
        f"model.cond_hidden=[{','.join(map(str, cond_hidden))}]",
    )
    last = train(config_for(store_path, out, *overrides, policy="diffusion"))
    policy = load_policy(out)
    assert policy.name == "diffusion" and policy.config.n_action_steps == 2
    assert policy.config.prediction == prediction and policy.config.cond_hidden == cond_hidden
    # With a trunk, the U-Net's FiLM layers read its last layer; without, the raw features.
    trunk = [k for k in load_file(str(last / "model.safetensors")) if k.startswith("condition.")]
    assert len(trunk) == 2 * len(cond_hidden)  # weight and bias per linear layer
    film_in = policy.unet.mid[0].film[1].in_features - policy.config.step_embedding
    assert film_in == (cond_hidden[-1] if cond_hidden else policy.encoder.out_dim)
    loss = [
        float(line.split(",")[-1])
        for line in (out / "metrics.csv").read_text().splitlines()
        if ",train,loss," in line
    ]
    assert np.mean(loss[-3:]) < 0.8 * np.mean(loss[:3])  # it learns its target
    twin = load_policy(last)
    env = envs.make("metaworld/push-v3")
    obs, _ = env.reset(seed=2)
    for p in (policy, twin):
        p.reset(task="push-v3")
    calls = []
    original = policy.predict_chunk
    policy.predict_chunk = lambda *a, **k: calls.append(1) or original(*a, **k)  # type: ignore[method-assign]
    for _ in range(5):
        torch.manual_seed(0)
        action = policy.act(obs)
        torch.manual_seed(0)
        np.testing.assert_array_equal(action, twin.act(obs))
        assert action.shape == (4,) and np.isfinite(action).all()
        normalized = policy.normalize("action", torch.from_numpy(action))
        assert float(normalized.abs().max()) <= 1 + 1e-5  # clipped chunks stay in the data's range
        obs, *_ = env.step(action)
    env.close()
    assert len(calls) == 3  # a chunk every n_action_steps=2 calls: at steps 0, 2, 4
    report = evaluate_checkpoint(out, episodes_per_task=1, max_episode_steps=20)
    assert [t.task for t in report.tasks] == ["reach-v3", "push-v3"]


def test_diffusion_resume_matches_an_uninterrupted_run(store_path, tmp_path):
    # Diffusion draws noise and steps inside its loss: the RNG state must resume too.
    straight = train(config_for(store_path, tmp_path / "straight", policy="diffusion"))

    def interrupt(step: int, metrics: dict) -> None:
        if step == 20:
            raise KeyboardInterrupt

    config = config_for(store_path, tmp_path / "resumed", policy="diffusion")
    with pytest.raises(KeyboardInterrupt):
        train(config, on_step=interrupt)
    resumed = train(config, resume=True)
    a = load_file(str(straight / "model.safetensors"))
    b = load_file(str(resumed / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.action_horizon=5"], "must be divisible by 2"),
        (["model.n_action_steps=9"], "n_action_steps must be between"),
        (["model.image_encoder=vit"], "unknown image encoder 'vit'"),
        (["model.task_encoding=words"], "unknown task encoding 'words'"),
        (["model.prediction=v"], "model.prediction must be 'epsilon' or 'sample'"),
        (["model.noise_scale=-0.5"], "model.noise_scale must be ≥ 0"),
        (["model.cond_hidden=[64,0]"], "model.cond_hidden lists layer widths"),
    ],
)
def test_bad_model_config_is_a_config_error(store_path, tmp_path, overrides, message):
    config = config_for(store_path, tmp_path / "x", *overrides, policy="diffusion")
    with pytest.raises(ConfigError, match=message):
        train(config)


def test_resnet18_is_resnet18():
    net = ResNet18(out_dim=32)
    head = ("keypoints", "out")
    trunk = sum(p.numel() for n, p in net.named_parameters() if n.split(".")[0] not in head)
    assert trunk == 11_176_512  # torchvision's resnet18 without its fc layer
    names = {n for n, _ in net.named_parameters()}
    assert {"conv1.weight", "layer2.0.downsample.0.weight", "layer4.1.bn2.bias"} <= names
    images = torch.randint(0, 256, (2, 84, 84, 3), dtype=torch.uint8)
    assert net(images).shape == (2, 32)


def test_bc_on_images_with_resnet18_trains(tmp_path):
    from il.record import record_expert

    suite = envs.suite("metaworld/MT10")
    one = type(suite)(suite.name, suite.split, suite.tasks[:1])
    path = str(tmp_path / "img.zarr")
    obs = ("state", "image/corner")
    record_expert(one, path, episodes_per_task=2, workers=1, obs=obs, image_size=32)
    config = config_for(
        path,
        tmp_path / "run",
        "train.steps=4",
        "train.batch_size=4",
        "train.val_fraction=0",
        "data.obs=[obs/state,obs/image/corner]",
        "model.image_encoder=resnet18",
    )
    policy = load_policy(train(config))
    assert any(
        n.startswith("encoder.cameras.obs__image__corner.layer4") for n in policy.state_dict()
    )
    env = envs.make("metaworld/reach-v3", obs=("state", "image/corner"), image_size=32)
    obs, _ = env.reset(seed=0)
    policy.reset()
    assert policy.act(obs).shape == (4,)
    env.close()


def test_bc_on_proprio_and_images_trains_and_acts(tmp_path):
    # What a real arm gives a policy: its own hand and gripper, and cameras; no object poses.
    from il.record import record_expert

    suite = envs.suite("metaworld/MT10")
    one = type(suite)(suite.name, suite.split, suite.tasks[:1])
    path = str(tmp_path / "img.zarr")
    obs = ("proprio", "image/corner")
    record_expert(one, path, episodes_per_task=2, workers=1, obs=obs, image_size=32)
    store = DemoStore.open(path)
    steps = store.read_episode(0, ["obs/proprio", "procedure/hand"])
    np.testing.assert_array_equal(steps["obs/proprio"][:, :3], steps["procedure/hand"])
    config = config_for(
        path,
        tmp_path / "run",
        "train.steps=4",
        "train.batch_size=4",
        "train.val_fraction=0",
        "data.obs=[obs/proprio,obs/image/corner]",
        "model.image_shift=2",
        "model.obs_horizon=2",
        "model.image_encoder=conv4",
        "model.image_channels=[8,16,16,16]",
        "train.amp=bf16",  # the preset's mixed precision on a CPU
        "data.memory_gb=0.01",
    )
    data = prepare_data(config, config.model)
    # two episodes of 32x32 images fit in 10 MB: decoded once, not at every batch
    assert data.train.readers()["obs/image/corner"].mode == "memory"
    config.data.memory_gb = 0
    assert prepare_data(config, config.model).train.readers()["obs/image/corner"].mode != "memory"
    config.data.memory_gb = 0.01
    policy = load_policy(train(config))
    assert policy.config.image_shift == 2
    # bf16 for the convolutions, float32 for the actions: the head leaves autocast
    batch = batch_at(data.train, data.train_tasks, 2, (0,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chunk = policy.predict_chunk(policy.training_observations(batch), batch["task"])
    assert chunk.dtype == torch.float32
    convs = [m for m in policy.encoder.cameras["obs__image__corner"].convs if hasattr(m, "weight")]
    assert [c.out_channels for c in convs] == [8, 16, 16, 16]
    config.model.image_encoder, config.model.image_channels = "cnn", [16, 32, 32]
    config.out = str(tmp_path / "bad")
    with pytest.raises(ConfigError, match="the cnn image encoder takes 2 widths"):
        train(config)
    env = envs.make("metaworld/reach-v3", obs=obs, image_size=32)
    o, _ = env.reset(seed=0)
    policy.reset()
    assert policy.act(o).shape == (4,)
    env.close()


def test_image_shift_moves_a_window_as_one_and_only_in_training():
    class Seen(torch.nn.Module):  # stands in for the camera's encoder: keeps what it is given
        def forward(self, images):
            seen.append(images)
            return images.new_zeros(len(images), 8)

    seen = []
    encoder = ObservationEncoder({"obs/image/corner": (16, 16, 3)}, 2, 1, 8, image_shift=3)
    encoder.cameras["obs__image__corner"] = Seen()
    frame = torch.randint(0, 256, (1, 1, 16, 16, 3), dtype=torch.uint8)
    window = frame.repeat(64, 2, 1, 1, 1)  # b t h w c: the same frame twice, in 64 windows
    encoder.train()
    encoder({"obs/image/corner": window}, torch.zeros(64, dtype=torch.long))
    shifted = rearrange(seen[-1], "(b t) h w c -> b t h w c", t=2)
    torch.testing.assert_close(shifted[:, 0], shifted[:, 1])  # both frames moved alike
    assert (shifted[:, 0] != frame[:, 0].float()).any(dim=(1, 2, 3)).sum() > 32  # most moved
    encoder.eval()
    encoder({"obs/image/corner": window}, torch.zeros(64, dtype=torch.long))
    torch.testing.assert_close(seen[-1], rearrange(window, "b t h w c -> (b t) h w c"))


def test_text_conditioning_embeds_instructions_once(store_path, tmp_path, monkeypatch):
    conditioning = TaskConditioning(3, "text", ["open the drawer", "close the drawer", "reach"])
    e = conditioning.embeddings
    assert e.shape == (3, text.EMBEDDING_DIM)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))
    assert float(e[0] @ e[1]) > float(e[0] @ e[2])  # drawer tasks are near each other

    out = tmp_path / "run"
    train(config_for(store_path, out, "model.task_encoding=text", "train.steps=10"))

    def no_model():
        raise AssertionError("loading a checkpoint must not need the text model")

    monkeypatch.setattr(text, "_model", no_model)
    policy = load_policy(out)
    assert policy.spec.instructions == [envs.INSTRUCTIONS["reach-v3"], envs.INSTRUCTIONS["push-v3"]]
    table = policy.encoder.task.embeddings
    assert table.shape == (2, text.EMBEDDING_DIM) and float(table.abs().sum()) > 0
    env = envs.make("metaworld/reach-v3")
    obs, _ = env.reset(seed=0)
    policy.reset(task="reach-v3")
    assert policy.act(obs).shape == (4,)
    env.close()


def test_eval_during_training_logs_success(store_path, tmp_path):
    out = tmp_path / "run"
    config = config_for(
        store_path,
        out,
        "train.steps=20",
        "train.eval_every=10",
        "train.eval_episodes_per_task=1",
        "data.tasks=[reach-v3]",
    )
    config.train.eval_workers = 1
    train(config)
    rows = [r for r in (out / "metrics.csv").read_text().splitlines() if ",eval," in r]
    assert [r.split(",")[0] for r in rows] == ["10", "20"]
    assert all(0.0 <= float(r.split(",")[-1]) <= 1.0 for r in rows)
    assert not list((out / "checkpoints").glob("eval_*"))  # temporary exports are removed


def _small_data():
    """Spec and normalizer for a policy built with random weights rather than trained: a 5-d
    state, 2-d actions in [-1, 1], no tasks."""
    from il.data.normalize import KeyStats, Normalizer
    from il.policies.base import DataSpec

    torch.manual_seed(0)
    spec = DataSpec(obs_shapes={"obs/state": [5]}, action_dim=2, tasks=[])
    stats = {k: KeyStats(-np.ones(d), np.ones(d), np.zeros(d), np.ones(d), 1) for k, d in
             (("obs/state", 5), ("action", 2))}  # fmt: skip
    return spec, Normalizer(stats, {"obs/state": "mean_std", "action": "min_max"})


def _chunking_bc(action_horizon: int = 8, n_action_steps: int = 4):
    """A BC policy with random weights predicting chunks (obs: a 5-d state, 2-d actions)."""
    from il.policies.bc import BCConfig, BCPolicy

    config = BCConfig(action_horizon=action_horizon, n_action_steps=n_action_steps, hidden=[16])
    return BCPolicy(config, *_small_data()).eval()


def test_act_ahead_runs_each_action_at_the_step_it_was_predicted_for():
    policy = _chunking_bc()
    observations = [{"state": np.full(5, i / 10, dtype=np.float32)} for i in range(12)]
    # Without act-ahead: a chunk predicted from the observation of steps 0, 4, 8.
    plain = [policy.act(o) for o in observations]
    policy.reset()
    policy.set_act_ahead(2)
    ahead = [policy.act(o) for o in observations]

    def chunk(step: int) -> np.ndarray:
        with torch.no_grad():
            return policy._predict([{"obs/state": observations[step]["state"]}])

    np.testing.assert_array_equal(ahead[:4], plain[:4])  # the first chunk cannot be early
    # Steps 4-7 come from the chunk predicted at step 2 (its entries 2..5), 8-11 from step 6.
    np.testing.assert_allclose(ahead[4:8], chunk(2)[2:6], rtol=1e-6)
    np.testing.assert_allclose(ahead[8:12], chunk(6)[2:6], rtol=1e-6)
    assert not np.allclose(ahead[4:8], plain[4:8])  # earlier observations, other actions
    policy.reset()  # a new episode starts with a chunk of its own again
    np.testing.assert_array_equal(policy.act(observations[0]), plain[0])


@pytest.mark.parametrize("steps", [-1, 5])
def test_act_ahead_beyond_the_chunk_is_refused(steps):
    with pytest.raises(ValueError, match="act-ahead"):
        _chunking_bc().set_act_ahead(steps)


@pytest.mark.parametrize("head", ["mse", "gmm"])
def test_gmm_head_keeps_both_branches_where_regression_averages_them(head):
    """The expert pushes down or lifts from nearly the same state: a regressor learns the
    standstill between the two, the mixture acts out one branch or the other."""
    from dataclasses import replace

    from il.policies.bc import BCPolicy

    base = _chunking_bc(action_horizon=1, n_action_steps=1)
    config = replace(base.config, head=head, gmm_modes=2, hidden=[32, 32])
    torch.manual_seed(0)
    policy = BCPolicy(config, base.spec, base.normalizer)
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    b = 64
    state = torch.zeros(b, 1, 5)
    branch = torch.where(torch.arange(b) % 2 == 0, 0.8, -0.8)
    action = torch.stack([branch, torch.full((b,), 0.3)], dim=-1)[:, None]  # b 1 2
    batch = {"obs/state": state, "action": action, "action_is_pad": torch.zeros(b, 1, dtype=bool)}
    batch["task"] = torch.zeros(b, dtype=torch.long)
    for _ in range(400):
        loss, _ = policy.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    policy.eval()
    acted = np.array([policy.act({"state": np.zeros(5, np.float32)})[0] for _ in range(40)])
    if head == "mse":
        np.testing.assert_allclose(acted, 0.0, atol=0.1)  # the average of the branches
    else:
        assert np.all(np.abs(np.abs(acted) - 0.8) < 0.1)  # always one branch
        assert 5 < (acted > 0).sum() < 35  # and both are taken

        def episode(seed: int) -> np.ndarray:
            policy.reset(seed=seed)
            return np.array([policy.act({"state": np.zeros(5, np.float32)}) for _ in range(20)])

        # a seeded episode draws the same modes again, whatever ran in between
        np.testing.assert_array_equal(episode(3), episode(3))
        assert not np.array_equal(episode(3), episode(4))

        # `gmm_act: best` executes the heavier mode every time, whatever the seed
        policy.config.gmm_act = "best"
        best = np.concatenate([episode(3), episode(4)])[:, 0]
        assert np.all(np.abs(np.abs(best) - 0.8) < 0.1) and len(np.unique(np.sign(best))) == 1


def test_unknown_gmm_act_is_a_config_error(store_path, tmp_path):
    config = config_for(store_path, tmp_path / "x", "model.head=gmm", "model.gmm_act=mean")
    with pytest.raises(ConfigError, match=r"model\.gmm_act must be"):
        train(config)


def test_unknown_bc_head_is_a_config_error(store_path, tmp_path):
    config = config_for(store_path, tmp_path / "x", "model.head=flow")
    with pytest.raises(ConfigError, match=r"model\.head must be"):
        train(config)


def test_acting_overrides_change_how_a_checkpoint_acts_not_its_weights(tmp_path):
    policy = _chunking_bc(action_horizon=8, n_action_steps=4)
    policy.save(tmp_path / "ckpt")
    changed = load_policy(tmp_path / "ckpt", acting=["model.n_action_steps=2"])
    assert changed.config.n_action_steps == 2 and changed.config.action_horizon == 8
    for name, weight in policy.state_dict().items():
        torch.testing.assert_close(changed.state_dict()[name], weight)
    calls = []
    original = changed.predict_chunk
    changed.predict_chunk = lambda *a, **k: calls.append(1) or original(*a, **k)  # type: ignore[method-assign]
    for i in range(6):
        changed.act({"state": np.full(5, i / 10, dtype=np.float32)})
    assert len(calls) == 3  # a chunk every 2 steps instead of every 4
    ensembled = load_policy(tmp_path / "ckpt", acting=["model.temporal_ensemble=0.01"])
    assert ensembled.config.temporal_ensemble == pytest.approx(0.01)


def test_diffusion_noise_scale_sets_the_sampling_temperature(tmp_path):
    from il.policies.diffusion import DiffusionConfig, DiffusionPolicy

    config = DiffusionConfig(action_horizon=4, n_action_steps=2, down_dims=[8, 16], groups=4)
    DiffusionPolicy(config, *_small_data()).eval().save(tmp_path / "ckpt")
    obs = {"obs/state": torch.randn(1, 2, 5)}
    task = torch.zeros(1, dtype=torch.long)

    def chunks(policy, seeds=(1, 2)):
        with torch.no_grad():
            return [
                policy.predict_chunk(obs, task, torch.Generator().manual_seed(s)) for s in seeds
            ]

    # As trained, different noise gives different chunks; at scale 0 every draw starts from
    # the same point, so DDIM returns one chunk whatever the generator.
    a, b = chunks(load_policy(tmp_path / "ckpt"))
    assert not torch.allclose(a, b)
    cold = load_policy(tmp_path / "ckpt", acting=["model.noise_scale=0"])
    assert cold.config.noise_scale == 0
    a, b = chunks(cold)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # With eta > 0 each step draws noise too, and the scale covers that noise as well.
    stochastic = load_policy(tmp_path / "ckpt", acting=["model.eta=1", "model.noise_scale=0"])
    torch.testing.assert_close(*chunks(stochastic), rtol=0, atol=0)
    from il.policies.base import CheckpointError

    with pytest.raises(CheckpointError, match="noise_scale must be ≥ 0"):
        load_policy(tmp_path / "ckpt", acting=["model.noise_scale=-1"])


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("model.hidden=[8]", "model.hidden cannot change on a trained bc policy"),
        ("model.n_action_steps=9", "n_action_steps must be between 1 and action_horizon"),
        ("model.n_action_steps=many", "bad value for model.n_action_steps"),
        ("n_action_steps=2", "is not model.key=value"),
    ],
)
def test_acting_overrides_refuse_what_would_need_training(tmp_path, item, message):
    from il.policies.base import CheckpointError

    _chunking_bc().save(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=message) as e:
        load_policy(tmp_path / "ckpt", acting=[item])
    assert "\n" not in str(e.value)
