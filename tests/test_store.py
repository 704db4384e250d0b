"""The DemoStore: atomic episodes, crash safety, one writer, schema checks, fsspec URLs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from il.data.store import DemoStore, KeySpec, StoreError, StoreSchema

SCHEMA = StoreSchema(
    keys={
        "obs/state": KeySpec((5,), "float32", "state"),
        "obs/image/cam": KeySpec((16, 16, 3), "uint8", "camera", chunk_steps=8),
        "action": KeySpec((2,), "float32", "action"),
    },
    fps=10.0,
    action={"type": "delta"},
    source={"env": "test"},
)


def episode(i: int) -> dict[str, np.ndarray]:
    """Deterministic episode i, so a writer killed mid-way can be checked bit for bit."""
    rng = np.random.default_rng(i)
    T = int(rng.integers(1, 40))
    return {
        "obs/state": rng.normal(size=(T, 5)).astype(np.float32),
        "obs/image/cam": rng.integers(0, 255, size=(T, 16, 16, 3), dtype=np.uint8),
        "action": rng.normal(size=(T, 2)).astype(np.float32),
    }


def assert_episodes_intact(store: DemoStore) -> None:
    for ep in store.episodes():
        expected = episode(ep.meta["seed"])
        got = store.read_episode(ep.index)
        for k, v in expected.items():
            np.testing.assert_array_equal(got[k], v, err_msg=f"episode {ep.index} key {k}")


def test_append_and_read_back(tmp_path):
    path = tmp_path / "demos.zarr"
    with DemoStore.create(path, SCHEMA) as store:
        for i in range(6):
            store.add_episode(episode(i), task="t", seed=i, success=i % 2 == 0)
    store = DemoStore.open(path)
    assert store.num_episodes == 6
    assert store.num_steps == sum(len(episode(i)["action"]) for i in range(6))
    assert np.all(np.diff(store.episode_ends) > 0)
    assert_episodes_intact(store)
    meta = store.episode_meta()
    assert list(meta["success"]) == [True, False] * 3
    info = store.info()
    assert info["episodes"] == 6 and info["tasks"] == {"t": 6}
    assert info["keys"]["obs/image/cam"]["chunks"][0] == 8


@pytest.mark.parametrize("prefix", ["memory://", "file://"])
def test_fsspec_urls(tmp_path, prefix):
    url = f"memory://store-{uuid.uuid4().hex}" if prefix == "memory://" else f"file://{tmp_path}/s"
    with DemoStore.create(url, SCHEMA) as store:
        store.add_episode(episode(1), seed=1)
        store.add_episode(episode(2), seed=2)
    store = DemoStore.open(url)
    assert store.num_episodes == 2
    assert_episodes_intact(store)
    with DemoStore.open(url, mode="a") as store:
        store.add_episode(episode(3), seed=3)
    assert DemoStore.open(url).num_episodes == 3


def test_second_writer_is_refused_and_reader_sees_committed_only(tmp_path):
    path = tmp_path / "demos.zarr"
    writer = DemoStore.create(path, SCHEMA)
    writer.add_episode(episode(0), seed=0)
    with pytest.raises(StoreError, match="being written by pid"):
        DemoStore.open(path, mode="a")
    reader = DemoStore.open(path)
    assert reader.num_episodes == 1
    # Data of a second episode written but not yet committed stays invisible.
    ep = episode(1)
    arr = writer.array("action")
    n = writer.num_steps
    arr.resize((n + len(ep["action"]), 2))
    arr[n:] = ep["action"]
    reader.refresh()
    assert reader.num_episodes == 1
    writer.repair()
    writer.add_episode(ep, seed=1)
    reader.refresh()
    assert reader.num_episodes == 2
    assert_episodes_intact(reader)
    writer.close()
    DemoStore.open(path, mode="a").close()  # lock released


def test_schema_mismatch_names_the_key(tmp_path):
    path = tmp_path / "demos.zarr"
    DemoStore.create(path, SCHEMA).close()
    other = StoreSchema(keys={**SCHEMA.keys, "obs/state": KeySpec((6,), "float32")}, fps=10.0)
    with pytest.raises(StoreError, match=r"key 'obs/state': store has shape \(5,\)"):
        DemoStore.open_or_create(path, other)
    extra = StoreSchema(keys={**SCHEMA.keys, "reward": KeySpec((), "float32")}, fps=10.0)
    with pytest.raises(StoreError, match="'reward' is not in"):
        DemoStore.open_or_create(path, extra)
    with DemoStore.open(path, mode="a") as store:
        bad = episode(0)
        bad["obs/state"] = bad["obs/state"][:, :4]
        with pytest.raises(StoreError, match="obs/state"):
            store.add_episode(bad)
        with pytest.raises(StoreError, match="lacks key"):
            store.add_episode({"action": episode(0)["action"]})
        with pytest.raises(StoreError, match="same, non-zero"):
            ep = episode(0)
            ep["action"] = ep["action"][:-1]
            store.add_episode(ep)


def test_bad_paths_get_one_line_errors(tmp_path):
    with pytest.raises(StoreError, match="no store at"):
        DemoStore.open(tmp_path / "missing.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="is not a DemoStore"):
        DemoStore.open(tmp_path / "plain")
    import zarr

    zarr.open_group(tmp_path / "other.zarr", mode="w")
    with pytest.raises(StoreError, match="not a DemoStore"):
        DemoStore.open(tmp_path / "other.zarr")
    store = DemoStore.create(tmp_path / "old.zarr", SCHEMA)
    info = dict(store.root.attrs["il"])
    info["schema_version"] = 99
    store.root.attrs["il"] = info
    store.close()
    with pytest.raises(StoreError, match="schema version 99"):
        DemoStore.open(tmp_path / "old.zarr")


WRITER = """
import sys
sys.path.insert(0, {tests!r})
from test_store import SCHEMA, episode
from il.data.store import DemoStore
store = DemoStore.open_or_create({path!r}, SCHEMA)
start = store.num_episodes
for i in range(start, start + 10_000):
    store.add_episode(episode(i), seed=i)
    print(i, flush=True)
"""


def test_kill_9_at_random_moments_loses_at_most_the_episode_in_flight(tmp_path):
    path = str(tmp_path / "demos.zarr")
    tests = os.path.dirname(__file__)
    rng = np.random.default_rng(0)
    committed_before = 0
    for _ in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER.format(tests=tests, path=path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        proc.stdout.readline()  # at least one episode committed in this run
        time.sleep(float(rng.uniform(0.0, 0.3)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        store = DemoStore.open(path)  # readable right away, before any repair
        assert store.num_episodes > committed_before
        assert [ep.meta["seed"] for ep in store.episodes()] == list(range(store.num_episodes))
        assert_episodes_intact(store)
        committed_before = store.num_episodes
    # Appending resumes after the last committed episode and the store stays consistent.
    with DemoStore.open(path, mode="a") as store:
        n = store.num_episodes
        store.add_episode(episode(n), seed=n)
    store = DemoStore.open(path)
    assert store.num_episodes == n + 1
    assert_episodes_intact(store)
    assert not list((tmp_path / "demos.zarr").rglob("*.partial"))
