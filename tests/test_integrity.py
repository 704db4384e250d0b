"""The DemoStore finds its own damage and fails in one line: checksums taken at commit, `il info
--verify`, `il train` and `il replay` refusing damaged episodes (or skipping them), and every
way a store's files can fail under it (read-only, unreadable, broken metadata, a full disk).

Real zarr stores on disk throughout; damage is done to their files as a disk or a person would
do it, and OS failures are raised where the OS would raise them.
"""

from __future__ import annotations

import builtins
import errno
import io
import logging
import os
import shutil
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr.storage._local as zarr_local
from numcodecs import blosc

from il.data.integrity import find_damage
from il.data.sampler import WindowSampler, window_spec
from il.data.store import (
    DemoStore,
    KeySpec,
    StoreAccessError,
    StoreDamagedError,
    StoreError,
    StoreFullError,
    StoreSchema,
)

SCHEMA = StoreSchema(
    keys={
        "obs/state": KeySpec((5,), "float32", "state"),
        "obs/image/cam": KeySpec((16, 16, 3), "uint8", "camera", chunk_steps=8),
        "action": KeySpec((2,), "float32", "action"),
    },
    fps=10.0,
)
EPISODES = 8
TRAIN = [
    "--policy",
    "bc",
    "train.steps=2",
    "train.batch_size=8",
    "train.warmup_steps=1",
    "train.val_fraction=0.25",
    "train.log_every=1",
    "train.val_every=2",
    "model.hidden=[16,16]",
]


def episode(i: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    T = int(rng.integers(20, 40))
    return {
        "obs/state": rng.normal(size=(T, 5)).astype(np.float32),
        "obs/image/cam": rng.integers(0, 255, size=(T, 16, 16, 3), dtype=np.uint8),
        "action": rng.uniform(-1, 1, size=(T, 2)).astype(np.float32),
    }


def make_store(path: Path, episodes: int = EPISODES) -> Path:
    with DemoStore.create(path, SCHEMA) as store:
        for i in range(episodes):
            store.add_episode(episode(i), task="t", seed=i, success=True)
    return path


def assert_intact(path: Path, episodes: int) -> None:
    store = DemoStore.open(path)
    assert store.num_episodes == episodes
    for ep in store.episodes():
        got = store.read_episode(ep.index)
        for key, want in episode(ep.meta["seed"]).items():
            np.testing.assert_array_equal(got[key], want, err_msg=f"episode {ep.index} {key}")
    assert find_damage(store) == []


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return make_store(tmp_path / "demos.zarr")


@pytest.fixture
def il(monkeypatch, capsys) -> Callable[..., tuple[int, str, str]]:
    """Run the `il` console script in this process (so OS failures injected here reach it):
    exit status, stdout, stderr."""
    from il.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["il", *args])
        with pytest.raises(SystemExit) as stopped:
            main()
        out, err = capsys.readouterr()
        return stopped.value.code or 0, out, err

    return run


def one_line(result: tuple[int, str, str]) -> str:
    code, out, err = result
    assert code == 2, out + err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def flip_bytes_silently(store: Path, key: str = "action") -> list[int]:
    """Invert 8 bytes of the key's first chunk file where it still decodes, to different values
    of recorded steps: the damage no codec notices. Returns the episodes whose steps changed."""
    demos = DemoStore.open(store)
    chunk = store / "data" / key / "c/0/0"
    raw = chunk.read_bytes()
    dtype = demos.schema.keys[key].dtype
    before = np.frombuffer(blosc.decompress(raw), dtype).reshape(-1, *demos.schema.keys[key].shape)
    for offset in range(len(raw) // 2, len(raw) - 8):
        damaged = bytearray(raw)
        damaged[offset : offset + 8] = bytes(b ^ 0xFF for b in damaged[offset : offset + 8])
        try:
            after = np.frombuffer(blosc.decompress(bytes(damaged)), dtype)
        except RuntimeError:
            continue
        if after.size != before.size:
            continue
        changed = (after.reshape(before.shape) != before).reshape(len(before), -1).any(axis=1)
        rows = np.flatnonzero(changed[: demos.num_steps])
        if len(rows):
            chunk.write_bytes(bytes(damaged))
            return sorted(set(np.searchsorted(demos.episode_ends, rows, side="right").tolist()))
    raise AssertionError("no offset decodes to different data")


# --- checksums and il info --verify ---------------------------------------------------------
def test_checksums_are_taken_at_commit_and_survive_reopening(store):
    reopened = DemoStore.open(store)
    sums = reopened.checksums()
    assert reopened.has_checksums and sums is not None and set(sums) == set(SCHEMA.keys)
    assert all(len(v) == EPISODES and (v >= 0).all() for v in sums.values())
    assert reopened.info()["checksums"] == {"algorithm": "crc32", "episodes": EPISODES}
    with DemoStore.open(store, mode="a") as appending:
        appending.add_episode(episode(EPISODES), task="t", seed=EPISODES, success=True)
    assert_intact(store, EPISODES + 1)


def test_flipped_bytes_in_an_action_chunk_are_found_by_verify(store, il):
    chunk = store / "data/action/c/0/0"
    damaged = flip_bytes_silently(store)
    code, out, _ = il("info", str(store))
    assert code == 0 and "checksums: crc32 of every key, every episode" in out
    code, out, _ = il("info", str(store), "--verify")
    assert code == 1, out
    listed = [line.strip() for line in out.splitlines() if line.strip().startswith("episode ")]
    assert listed == [f"episode {e} 'action': checksum mismatch in {chunk}" for e in damaged]
    assert f"{len(damaged)} of {EPISODES} episodes damaged" in out
    code, out, _ = il("info", str(store), "--verify", "--json")
    assert code == 1 and f'"file": "{chunk}"' in out


def test_verify_of_an_intact_store_exits_zero(store, il):
    code, out, _ = il("info", str(store), "--verify")
    assert code == 0, out
    assert f"all {EPISODES} episodes, every key, decoded and matched their checksums" in out


def test_train_refuses_damaged_actions_in_one_line_and_creates_no_run(store, tmp_path, il):
    chunk = store / "data/action/c/0/0"
    damaged = flip_bytes_silently(store)
    run = tmp_path / "run"
    line = one_line(il("train", "--data", str(store), "--out", str(run), *TRAIN))
    assert f"episode {damaged[0]} 'action': checksum mismatch in {chunk}" in line
    assert "--skip-damaged" in line and "--verify" in line
    assert not run.exists()


def test_skip_damaged_trains_on_the_other_episodes(store, tmp_path, il, caplog):
    damaged = flip_bytes_silently(store)
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        code, out, err = il(
            "train", "--data", str(store), "--out", str(run), "--skip-damaged", *TRAIN
        )
    assert code == 0, out + err
    assert f"skipping {len(damaged)} damaged episode(s)" in caplog.text
    assert (run / "checkpoints" / "last").exists()

    from il.train import load_config, prepare_data

    config = load_config("bc", None, [f"data.path={store}", f"out={run}", *TRAIN[2:]])
    config.data.skip_damaged = True
    data = prepare_data(config, config.model)
    used = set(data.train.episodes) | set(data.val.episodes if data.val else [])
    assert used == set(range(EPISODES)) - set(damaged)


def test_random_bytes_over_an_image_chunk_name_episode_key_and_file(store, tmp_path, il):
    chunk = store / "data/obs/image/cam/c/3/0/0/0"  # steps 24..31: inside episode 0
    chunk.write_bytes(np.random.default_rng(0).bytes(chunk.stat().st_size))
    run = tmp_path / "run"
    obs = "data.obs=[obs/state,obs/image/cam]"
    line = one_line(il("train", "--data", str(store), "--out", str(run), obs, *TRAIN))
    assert "episode 0 'obs/image/cam': cannot be decoded" in line and str(chunk) in line
    assert not run.exists()
    code, out, _ = il("info", str(store), "--verify")
    assert code == 1 and "episode 0 'obs/image/cam': cannot be decoded" in out

    # Read without the check first, a sampler still names the file rather than the codec.
    sampler = WindowSampler(str(store), window_spec(["obs/image/cam"], 1), [0], memory_bytes=0)
    with pytest.raises(StoreDamagedError, match=f"{chunk}, a chunk of key 'obs/image/cam'"):
        sampler.batch(np.arange(len(sampler)))


def test_replay_refuses_a_damaged_episode_before_touching_the_robot(store, il):
    chunk = store / "data/action/c/0/0"
    damaged = flip_bytes_silently(store)
    # the robot is never made: the name would fail if it were
    args = ("replay", str(store), "--robot", "sim:no-such-env")
    line = one_line(il(*args, "--episode", str(damaged[0])))
    assert f"episode {damaged[0]} 'action': checksum mismatch in {chunk}" in line
    assert "another --episode" in line
    line = one_line(il(*args, "--episode", str(damaged[0]), "--skip-damaged"))
    assert "nothing to replay" in line


def test_a_store_without_checksums_opens_everywhere(store, tmp_path, il):
    shutil.rmtree(store / "meta" / "checksums")  # as a store written before checksums
    old = DemoStore.open(store)
    assert not old.has_checksums and old.checksums() is None
    assert old.info()["checksums"] is None
    code, out, _ = il("info", str(store))
    assert code == 0 and "checksums: none" in out and "--verify can only check" in out
    code, out, _ = il("info", str(store), "--verify")
    assert code == 0 and "decoded (no checksums)" in out
    code, out, err = il("train", "--data", str(store), "--out", str(tmp_path / "run"), *TRAIN)
    assert code == 0, out + err
    with DemoStore.open(store, mode="a") as appending:  # new episodes get checksums
        appending.add_episode(episode(EPISODES), task="t", seed=EPISODES, success=True)
    assert DemoStore.open(store).info()["checksums"]["episodes"] == 1
    code, out, _ = il("info", str(store))
    assert f"for 1 of {EPISODES + 1} episodes" in out
    assert_intact(store, EPISODES + 1)


# --- the files under a store failing ---------------------------------------------------------
class Denied:
    """Access refused the way the OS refuses a user: a real chmod, and where the tests run as
    root (whom permissions do not stop) the same refusal raised by the OS calls themselves."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.no_write: list[Path] = []
        self.no_read: list[Path] = []
        self.chmodded: dict[Path, int] = {}
        if os.geteuid() == 0:
            self._inject()

    def read_only(self, folder: Path) -> None:
        for path in [folder, *folder.rglob("*")]:
            self._chmod(path, ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        self.no_write.append(folder)

    def unreadable(self, file: Path) -> None:
        self._chmod(file, 0)
        self.no_read.append(file)

    def restore(self) -> None:
        self.no_write.clear()
        self.no_read.clear()
        for path, mode in reversed(self.chmodded.items()):
            path.chmod(mode)

    def _chmod(self, path: Path, mask: int) -> None:
        mode = path.stat().st_mode
        self.chmodded.setdefault(path, stat.S_IMODE(mode))
        path.chmod(stat.S_IMODE(mode) & mask)

    def _refuse(self, path: object, writing: bool) -> None:
        try:
            target = Path(os.fsdecode(path)).absolute()  # type: ignore[arg-type]
        except TypeError:
            return
        denied = any(target.is_relative_to(f) for f in self.no_write) if writing else False
        if denied or target in self.no_read:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(target))

    def _inject(self) -> None:
        real_open, real_os_open = builtins.open, os.open

        def checked_open(file, mode="r", *args, **kwargs):
            self._refuse(file, writing=any(c in mode for c in "wax+"))
            return real_open(file, mode, *args, **kwargs)

        def checked_os_open(file, flags, *args, **kwargs):
            writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
            self._refuse(file, writing=bool(flags & writes))
            return real_os_open(file, flags, *args, **kwargs)

        self.monkeypatch.setattr(builtins, "open", checked_open)
        self.monkeypatch.setattr(io, "open", checked_open)
        self.monkeypatch.setattr(os, "open", checked_os_open)
        for name in ("mkdir", "unlink", "rmdir"):
            self._wrap(name, 1)
        for name in ("rename", "replace", "link"):
            self._wrap(name, 2)

    def _wrap(self, name: str, paths: int) -> None:
        real = getattr(os, name)

        def checked(*args, **kwargs):
            for path in args[:paths]:
                self._refuse(path, writing=True)
            return real(*args, **kwargs)

        self.monkeypatch.setattr(os, name, checked)


@pytest.fixture
def denied(monkeypatch):
    access = Denied(monkeypatch)
    yield access
    access.restore()


def test_a_read_only_store_reads_but_refuses_appending_in_one_line(store, denied, il):
    denied.read_only(store)
    assert DemoStore.open(store).num_episodes == EPISODES  # readers need no write access
    with pytest.raises(StoreAccessError, match=r"cannot write .*chmod -R u\+w"):
        DemoStore.open(store, mode="a")
    line = one_line(
        il(
            "record",
            "--source",
            "expert",
            "--env",
            "metaworld/reach-v3",
            "--episodes-per-task",
            "1",
            "--workers",
            "1",
            "--out",
            str(store),
        )
    )
    assert f"cannot write {store}" in line and "Permission denied" in line
    denied.restore()
    assert_intact(store, EPISODES)


def test_creating_a_store_in_a_read_only_folder_is_one_line(tmp_path, denied):
    folder = tmp_path / "shared"
    folder.mkdir()
    denied.read_only(folder)
    with pytest.raises(StoreAccessError, match="Permission denied"):
        DemoStore.create(folder / "demos.zarr", SCHEMA)


def test_permission_denied_when_reading_is_one_line(store, tmp_path, denied, il):
    chunk = store / "data/action/c/0/0"
    denied.unreadable(chunk)
    line = one_line(il("train", "--data", str(store), "--out", str(tmp_path / "run"), *TRAIN))
    assert f"cannot read {chunk}: Permission denied" in line
    assert not (tmp_path / "run").exists()
    assert f"cannot read {chunk}" in one_line(il("info", str(store), "--verify"))
    denied.unreadable(store / "meta/episode_ends/zarr.json")
    assert "cannot read" in one_line(il("info", str(store)))


@pytest.mark.parametrize(
    "node", ["meta/episode_ends", "meta/success", "data/action", "data/obs/image/cam", ""]
)
@pytest.mark.parametrize("how", ["empty", "missing"])
def test_broken_array_metadata_is_one_line(store, tmp_path, il, node, how):
    document = store / node / "zarr.json"
    if how == "empty":
        document.write_bytes(b"")
    else:
        document.unlink()
    with pytest.raises(StoreError) as raised:
        DemoStore.open(store)
    message = str(raised.value)
    if node or how == "empty":
        assert isinstance(raised.value, StoreDamagedError)
        assert str(document) in message and ("is empty" if how == "empty" else "is missing")
    run = ("--out", str(tmp_path / "run"))
    for args in (("info", str(store)), ("train", "--data", str(store), *run, *TRAIN)):
        assert message in one_line(il(*args))
    assert not (tmp_path / "run").exists()


def test_broken_checksum_metadata_says_how_to_go_on_without(store):
    (store / "meta/checksums/zarr.json").write_text("{")
    with pytest.raises(StoreDamagedError, match="delete the folder meta/checksums"):
        DemoStore.open(store)


def full_disk(monkeypatch: pytest.MonkeyPatch, where: str, after: int = 0) -> None:
    """From the `after`-th write of a file under `where` on, the disk is full: the write gets
    half its bytes down, then fails as the OS fails it (zarr removes its temporary file)."""
    real_put = zarr_local._put
    seen = {"writes": 0}

    def put(path: Path, value, exclusive: bool = False) -> int:
        if where in path.as_posix():
            seen["writes"] += 1
            if seen["writes"] > after:
                view = value.as_buffer_like()
                path.parent.mkdir(parents=True, exist_ok=True)
                with zarr_local._atomic_write(path, "wb", exclusive=exclusive) as f:
                    f.write(bytes(view)[: len(view) // 2])
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_put(path, value, exclusive)

    monkeypatch.setattr(zarr_local, "_put", put)


@pytest.mark.parametrize(
    "where",
    ["data/obs/image/cam/c", "data/action/zarr.json", "meta/checksums/c", "meta/episode_ends/c"],
)
def test_a_full_disk_loses_only_the_episode_in_flight(store, monkeypatch, where):
    writer = DemoStore.open(store, mode="a")
    full_disk(monkeypatch, where)
    lost = rf"no space left .* episode {EPISODES} \(that episode is lost"
    with pytest.raises(StoreFullError, match=lost):
        writer.add_episode(episode(EPISODES), task="t", seed=EPISODES, success=True)
    assert writer.num_episodes == EPISODES
    monkeypatch.undo()  # space freed: the same writer goes on
    writer.add_episode(episode(EPISODES), task="t", seed=EPISODES, success=True)
    writer.close()
    assert_intact(store, EPISODES + 1)


def test_a_full_disk_while_recording_is_one_line(tmp_path, monkeypatch, il):
    out = tmp_path / "reach.zarr"
    full_disk(monkeypatch, "meta/episode_ends/c", after=1)  # the first episode commits
    line = one_line(
        il(
            "record",
            "--source",
            "expert",
            "--env",
            "metaworld/reach-v3",
            "--episodes-per-task",
            "2",
            "--workers",
            "1",
            "--out",
            str(out),
        )
    )
    assert "no space left" in line and "episode 1 (that episode is lost" in line
    monkeypatch.undo()
    store = DemoStore.open(out)
    assert store.num_episodes == 1 and find_damage(store) == []
