"""The window sampler and the normalizer, checked against brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from il.data.normalize import Normalizer, compute_stats
from il.data.sampler import (
    WindowDataset,
    WindowSampler,
    select_episodes,
    split_episodes,
    window_spec,
)
from il.data.store import DemoStore, KeySpec, StoreError, StoreSchema

SCHEMA = StoreSchema(
    keys={
        "obs/state": KeySpec((5,), "float32", "state", chunk_steps=7),
        "obs/image/cam": KeySpec((6, 6, 3), "uint8", "camera", chunk_steps=3),
        "action": KeySpec((2,), "float32", "action", chunk_steps=5),
        "language_motion": KeySpec((), "int16", "label", chunk_steps=4),
    },
    fps=10.0,
)


def make_episode(rng: np.random.Generator, T: int) -> dict[str, np.ndarray]:
    return {
        "obs/state": rng.normal(size=(T, 5)).astype(np.float32),
        "obs/image/cam": rng.integers(0, 255, size=(T, 6, 6, 3), dtype=np.uint8),
        "action": rng.normal(size=(T, 2)).astype(np.float32),
        "language_motion": rng.integers(0, 29, size=T).astype(np.int16),
    }


def build(path, lengths, seed=0) -> DemoStore:
    rng = np.random.default_rng(seed)
    store = DemoStore.create(path, SCHEMA)
    for i, T in enumerate(lengths):
        store.add_episode(
            make_episode(rng, T),
            task=f"task-{i % 3}",
            source=("expert", "teleop")[i % 2],
            success=i % 4 != 3,
            seed=i,
        )
    store.close()
    return DemoStore.open(path)


def reference_windows(store: DemoStore, keys, episodes):
    """Every window by the definition: for each step t of each episode, each key's offsets
    clipped into the episode, pad where clipped."""
    out = []
    for e in episodes:
        data = store.read_episode(int(e), list(keys))
        T = store.episode(int(e)).length
        for t in range(T):
            window = {}
            for key, (first, last) in keys.items():
                idx = [t + o for o in range(first, last + 1)]
                window[key] = np.stack([data[key][min(max(i, 0), T - 1)] for i in idx])
                window[f"{key}_is_pad"] = np.array([not 0 <= i < T for i in idx])
            out.append(window)
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build(tmp_path_factory.mktemp("s") / "demos.zarr", [1, 9, 4, 17, 2, 12, 6, 3])


SPEC = window_spec(
    ["obs/state", "obs/image/cam"], 2, ["action"], 16, extra={"language_motion": (-1, 3)}
)


@pytest.mark.parametrize("memory_bytes", [2**30, 0], ids=["in-memory", "chunk-decoding"])
def test_every_window_matches_the_reference(store, memory_bytes):
    sampler = WindowSampler(store, SPEC, memory_bytes=memory_bytes, cache_bytes=200)
    modes = {r.mode for r in sampler.readers().values()}
    assert modes == ({"memory"} if memory_bytes else {"chunks"})
    episodes = np.arange(store.num_episodes)
    expected = reference_windows(store, SPEC, episodes)
    assert len(sampler) == store.num_steps == len(expected)
    for i in np.random.default_rng(0).permutation(len(sampler)):
        assert_same(sampler[int(i)], expected[i])


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lengths=st.lists(st.integers(1, 20), min_size=1, max_size=6),
    obs_horizon=st.integers(1, 4),
    action_horizon=st.integers(1, 24),
    extra=st.tuples(st.integers(-5, 5), st.integers(0, 6)),
    in_memory=st.booleans(),
    data=st.data(),
)
def test_property_windows_match_brute_force(
    tmp_path_factory, lengths, obs_horizon, action_horizon, extra, in_memory, data
):
    store = build(tmp_path_factory.mktemp("p") / "d.zarr", lengths, seed=len(lengths))
    first, span = extra
    spec = window_spec(
        ["obs/image/cam", "obs/state"],
        obs_horizon,
        ["action"],
        action_horizon,
        extra={"language_motion": (first, first + span)},
    )
    episodes = np.array(
        sorted(data.draw(st.sets(st.integers(0, len(lengths) - 1), min_size=1))), dtype=np.int64
    )
    sampler = WindowSampler(store, spec, episodes, memory_bytes=2**30 if in_memory else 0)
    expected = reference_windows(store, spec, episodes)
    assert len(sampler) == len(expected)
    for i, window in enumerate(expected):
        assert_same(sampler[i], window)


def test_windows_never_cross_episodes(store):
    spec = window_spec(["obs/state"], 3, ["action"], 8)
    sampler = WindowSampler(store, spec)
    starts, ends = store.episode_starts, store.episode_ends
    for i in range(len(sampler)):
        for key in spec:
            steps, pad = sampler.steps(i, key)
            episode = np.searchsorted(ends, steps[0], side="right")
            assert np.all((steps >= starts[episode]) & (steps < ends[episode]))
            assert pad.dtype == bool


def test_sampler_sees_only_what_was_committed_when_made(tmp_path):
    path = tmp_path / "grow.zarr"
    writer = DemoStore.create(path, SCHEMA)
    rng = np.random.default_rng(1)
    writer.add_episode(make_episode(rng, 5), task="a")
    sampler = WindowSampler(str(path), window_spec(["obs/state"], 2))
    writer.add_episode(make_episode(rng, 7), task="a")
    assert len(sampler) == 5
    assert sampler[4]["obs/state"].shape == (2, 5)
    writer.close()


def test_episode_filters_and_split(store):
    meta = store.episode_meta()
    expert = select_episodes(store, sources=["expert"])
    assert all(meta["source"][expert] == "expert") and len(expert) == 4
    both = select_episodes(store, tasks=["task-1"], success=True)
    assert all(meta["task"][both] == "task-1") and all(meta["success"][both])
    with pytest.raises(StoreError, match="no episodes of task"):
        select_episodes(store, tasks=["nope"])
    train, val = split_episodes(np.arange(8), 0.25, seed=3)
    assert len(val) == 2 and len(train) == 6
    assert sorted([*train, *val]) == list(range(8))
    again = split_episodes(np.arange(8), 0.25, seed=3)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)
    assert len(split_episodes(np.arange(1), 0.5)[0]) == 1  # never an empty training set
    sampler = WindowSampler(store, window_spec(["obs/state"], 1), val)
    assert len(sampler) == int(sum(store.episode(int(e)).length for e in val))


def test_missing_key_is_one_clear_error(store):
    with pytest.raises(StoreError, match="no key"):
        WindowSampler(store, window_spec(["obs/image/wrist"], 2))


def test_memory_url_store_reads_through_zarr():
    store = DemoStore.create("memory://sampler-test", SCHEMA)
    rng = np.random.default_rng(2)
    for T in (4, 9):
        store.add_episode(make_episode(rng, T), task="m")
    sampler = WindowSampler(store, SPEC, memory_bytes=0)
    assert {r.mode for r in sampler.readers().values()} == {"zarr"}
    expected = reference_windows(store, SPEC, [0, 1])
    for i, window in enumerate(expected):
        assert_same(sampler[i], window)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_with_workers(store, context):
    sampler = WindowSampler(store.path, SPEC, memory_bytes=0)
    sampler[0]  # the parent has read (zarr's I/O thread is running) before workers start
    loader = torch.utils.data.DataLoader(
        WindowDataset(sampler),
        batch_size=5,
        num_workers=2,
        multiprocessing_context=context,
        shuffle=False,
    )
    batches = list(loader)
    assert sum(len(b["action"]) for b in batches) == len(sampler)
    first = batches[0]
    assert (
        first["obs/image/cam"].shape == (5, 2, 6, 6, 3)
        and first["obs/image/cam"].dtype == torch.uint8
    )
    assert first["action"].shape == (5, 16, 2) and first["action_is_pad"].dtype == torch.bool
    for i in range(5):
        for k, v in sampler[i].items():
            np.testing.assert_array_equal(first[k][i].numpy(), v)


# --- normalization ---------------------------------------------------------------------------


def test_streaming_stats_match_numpy(store):
    episodes = np.array([1, 2, 3, 5, 7])
    stats = compute_stats(store, ["obs/state", "obs/image/cam", "action"], episodes, block_steps=4)
    for key in ("obs/state", "action"):
        full = np.concatenate([store.read_episode(int(e), [key])[key] for e in episodes]).astype(
            np.float64
        )
        s = stats[key]
        np.testing.assert_allclose(s.mean, full.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(s.std, full.std(0), rtol=1e-10)
        np.testing.assert_array_equal(s.min, full.min(0))
        np.testing.assert_array_equal(s.max, full.max(0))
        assert s.count == len(full)
    images = np.concatenate(
        [store.read_episode(int(e), ["obs/image/cam"])["obs/image/cam"] for e in episodes]
    )
    np.testing.assert_allclose(stats["obs/image/cam"].mean, images.reshape(-1, 3).mean(0))
    assert stats["obs/image/cam"].mean.shape == (3,)  # per channel


def test_normalizer_round_trips_and_saves_exactly(store, tmp_path):
    norm = Normalizer.from_store(
        store, {"obs/state": "mean_std", "action": "min_max", "obs/image/cam": "identity"}
    )
    x = store.read_episode(3, ["action"])["action"]
    y = norm.normalize("action", x)
    assert y.min() >= -1 - 1e-6 and y.max() <= 1 + 1e-6
    np.testing.assert_allclose(norm.unnormalize("action", y), x, atol=1e-6)
    t = torch.from_numpy(store.read_episode(3, ["obs/state"])["obs/state"])
    back = norm.unnormalize("obs/state", norm.normalize("obs/state", t))
    torch.testing.assert_close(back, t, atol=1e-5, rtol=1e-5)
    path = tmp_path / "norm.json"
    norm.save(str(path))
    loaded = Normalizer.load(str(path))
    assert loaded.modes == norm.modes
    for key, s in norm.stats.items():
        for field in ("min", "max", "mean", "std"):
            assert np.array_equal(getattr(loaded.stats[key], field), getattr(s, field))


def test_constant_dimension_does_not_divide_by_zero(tmp_path):
    store = DemoStore.create(tmp_path / "c.zarr", SCHEMA)
    rng = np.random.default_rng(0)
    ep = make_episode(rng, 6)
    ep["action"][:, 1] = 0.5
    store.add_episode(ep)
    norm = Normalizer.from_store(store, {"action": "min_max"})
    y = norm.normalize("action", ep["action"])
    assert np.all(np.isfinite(y)) and np.allclose(y[:, 1], 0.0)
    np.testing.assert_allclose(norm.unnormalize("action", y), ep["action"], atol=1e-6)


def test_bad_mode_is_a_clear_error(store):
    with pytest.raises(ValueError, match="must be one of"):
        Normalizer.from_store(store, {"action": "zscore"})


@pytest.mark.parametrize("memory_bytes", [2**30, 0], ids=["in-memory", "chunk-decoding"])
def test_batch_equals_stacked_windows(store, memory_bytes):
    sampler = WindowSampler(store, SPEC, memory_bytes=memory_bytes)
    indices = np.random.default_rng(1).integers(0, len(sampler), size=17)
    batch = sampler.batch(indices)
    for row, i in enumerate(indices):
        for k, v in sampler[int(i)].items():
            np.testing.assert_array_equal(batch[k][row], v, err_msg=k)
    starts, ends = store.episode_starts, store.episode_ends
    for i in indices:
        episode = sampler.window_episodes[i]
        steps, _ = sampler.steps(int(i), "action")
        assert starts[episode] <= steps.min() and steps.max() < ends[episode]
