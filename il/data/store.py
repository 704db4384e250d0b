"""The DemoStore: every demonstration a policy learns from, in one crash-safe zarr 3 store.

Layout (time-major, as diffusion_policy made popular, plus what it lacks)::

    demos.zarr/
      zarr.json              attrs["il"]: format, schema version, fps, action convention,
                             per-key descriptions, env or robot identity
      data/<key>             every episode back to back along axis 0 (obs/state, action, ...)
      meta/episode_ends      (E,) int64, cumulative: the commit point of each episode
      meta/<field>           (E,) per-episode metadata: task, instruction, success, seed, ...

Why an episode is all-or-nothing: an episode is written in a fixed order — per-step data, then
per-episode metadata, then one entry of `meta/episode_ends`. Every file zarr writes on a local
disk is written to a temporary name and renamed into place, so each chunk and each metadata
document is either the old or the new version, never half of one. A reader trusts only the
prefix of `episode_ends` that is strictly increasing and within the data, so anything written
after the last complete entry — the episode in flight when the process was killed — is
invisible, and the next writer trims it before appending. Nothing committed is ever rewritten
except the boundary chunk, which is replaced atomically with its committed part intact.

Why every episode carries checksums: a chunk can change after it was committed (a bad disk, a
copy cut short, a stray write), and Blosc decodes most such changes without complaint. Before the
commit point, `meta/checksums` gets one CRC-32 per key of the episode's rows as the recorder
handed them, so readers (`il.data.integrity`) can tell a damaged episode from a recorded one.

Why a key can be rewritten: labels derived from the recorded data (language motions) are
recomputed when their thresholds change. `rewrite_key` replaces one key's rows in an order that
keeps the store readable and its checksums true at every moment (see there).

One writer at a time: a local store takes an exclusive `flock` on `.writer.lock` (released by the
kernel when the process dies, so `kill -9` never leaves a stale lock). Readers need no lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.storage

from robots.action import ActionSpec

__all__ = [
    "CHECKSUM",
    "FORMAT",
    "SCHEMA_VERSION",
    "Damage",
    "DemoStore",
    "Episode",
    "KeySpec",
    "StoreAccessError",
    "StoreDamagedError",
    "StoreError",
    "StoreFullError",
    "StoreSchema",
    "rows_checksum",
]

FORMAT = "il.demostore"
SCHEMA_VERSION = 1
_UNSET = -1  # fill value of episode_ends: an entry that was never written
META_FIELDS: dict[str, Any] = {
    "task": str,
    "instruction": str,
    "success": "bool",
    "seed": "int64",
    "source": str,
    "length": "int64",
}
"""Per-episode metadata every store carries (strings as zarr 3 variable-length UTF-8)."""
LATER_META_FIELDS: dict[str, int] = {"variation": -1, "task_seed": -1}
"""Per-episode integers added after the first stores were written, with the value an episode
reads as where its store predates them (-1: not known): the env's variation (which object and
goal positions) and the benchmark seed its variations were drawn with. Appending to such a
store adds the field, -1 for the episodes before."""
SOURCES = ("expert", "teleop", "policy", "intervention", "human")
"""Who an episode is by: a scripted expert, an operator driving the robot, a policy, a policy
an operator or corrector stepped in on, or a person's hand on video (no robot at all)."""
CHECKSUM = "crc32"
"""How `meta/checksums` sums an episode's rows of one key (see `rows_checksum`)."""
_NO_CHECKSUM = -1  # fill value of meta/checksums: an episode written without one


class StoreError(Exception):
    """A store that cannot be used as asked; the message says what to do."""


class StoreAccessError(StoreError):
    """The store, or a file in it, cannot be read or written by this process (permissions, a
    read-only file system)."""


class StoreFullError(StoreError):
    """The disk filled up while an episode was written: that episode is lost, every episode
    committed before it is intact."""


@dataclass(frozen=True)
class Damage:
    """One key of one committed episode that does not read back as it was recorded."""

    episode: int
    key: str
    file: str
    """The chunk file(s) holding the episode's rows of `key`: one path, or a shell-style range
    such as `.../c/{3..7}/0/0/0` when a checksum cannot tell which of them changed."""
    problem: str
    """`checksum mismatch`, or why the chunk could not be read (`cannot be decoded: ...`)."""

    def describe(self) -> str:
        return f"episode {self.episode} {self.key!r}: {self.problem} in {self.file}"


class StoreDamagedError(StoreError):
    """Data or metadata of the store does not read back as it was written. `damage` lists the
    damaged episodes and keys where they are known (empty for broken metadata)."""

    def __init__(self, message: str, damage: tuple[Damage, ...] = ()) -> None:
        super().__init__(message)
        self.damage = damage


def rows_checksum(rows: np.ndarray, running: int = 0) -> int:
    """CRC-32 of an episode's rows of one key as the store holds them (C order, little-endian).

    Passing the previous value as `running` continues it, so an episode read chunk by chunk sums
    to the same value as the whole episode at once: a reader never needs the episode in one
    piece. CRC-32 runs at several GB/s, far faster than the Blosc decode it checks."""
    rows = np.ascontiguousarray(rows)
    if rows.dtype.byteorder == ">":
        rows = rows.astype(rows.dtype.newbyteorder("<"))
    return zlib.crc32(rows.reshape(-1).view(np.uint8), running)


@dataclass(frozen=True)
class KeySpec:
    """Shape (without time), dtype and meaning of one per-step key."""

    shape: tuple[int, ...]
    dtype: str
    description: str = ""
    chunk_steps: int | None = None
    """Time steps per chunk; None picks a default from the size of one step."""

    def to_json(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "dtype": self.dtype,
            "description": self.description,
            "chunk_steps": self.chunk_steps,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> KeySpec:
        return cls(tuple(d["shape"]), d["dtype"], d.get("description", ""), d.get("chunk_steps"))


@dataclass(frozen=True)
class StoreSchema:
    """What a store holds; written once at creation and checked on every append."""

    keys: dict[str, KeySpec]
    fps: float
    action: dict[str, Any] = field(default_factory=dict)
    """The action convention, in the JSON form of `robots.action.ActionSpec`
    (`spec.to_json()`): what each number of `action` means."""
    source: dict[str, Any] = field(default_factory=dict)
    """Identity of the env or robot that produced the data."""

    @property
    def action_spec(self) -> ActionSpec | None:
        """The action convention, typed; None for a store that states none."""
        try:
            return ActionSpec.from_json(self.action)
        except (KeyError, TypeError, ValueError) as e:
            raise StoreError(f"the store's action convention cannot be read: {e}") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "fps": self.fps,
            "action": self.action,
            "source": self.source,
            "keys": {k: v.to_json() for k, v in self.keys.items()},
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> StoreSchema:
        return cls(
            keys={k: KeySpec.from_json(v) for k, v in d["keys"].items()},
            fps=float(d["fps"]),
            action=dict(d.get("action", {})),
            source=dict(d.get("source", {})),
        )


@dataclass
class Episode:
    """One committed episode: its slice of the data and its metadata."""

    index: int
    start: int
    end: int
    meta: dict[str, Any]

    @property
    def length(self) -> int:
        return self.end - self.start


IMAGE_CHUNK_BYTES = 96 * 1024
"""Decoded bytes per chunk of a large key (an image): four 84x84 RGB frames. Random training
windows decode a whole chunk for one or two frames, so smaller is faster there, while
whole-episode replay and file count favour larger; see docs/store.md for the measurement."""
VECTOR_CHUNK_BYTES = 256 * 1024


def _default_chunk_steps(spec: KeySpec) -> int:
    """Time steps per chunk: about `IMAGE_CHUNK_BYTES` for keys of 4 KiB or more per step
    (images), long chunks for small vectors (few files; the sampler keeps them in memory)."""
    step_bytes = int(np.prod(spec.shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize
    if step_bytes >= 4096:
        return max(1, IMAGE_CHUNK_BYTES // step_bytes)
    return int(np.clip(VECTOR_CHUNK_BYTES // max(step_bytes, 1), 8, 4096))


def _compressors(spec: KeySpec) -> Any:
    # LZ4 decodes at several GB/s: training reads far more often than recording writes.
    return zarr.codecs.BloscCodec(
        cname="lz4",
        clevel=5,
        shuffle="bitshuffle" if np.dtype(spec.dtype).itemsize > 1 else "shuffle",
    )


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _local_path(path: str) -> Path:
    return Path(path.removeprefix("file://"))


def _normalize(path: str | os.PathLike) -> str:
    """Local paths (also `file://` URLs) go through zarr's LocalStore, whose writes are atomic
    renames; anything else is an fsspec URL."""
    path = str(path)
    return str(_local_path(path)) if _is_local(path) else path


class DemoStore:
    """Append-only episodes in a zarr 3 group on a local path or any fsspec URL.

    Open with `DemoStore.create(path, schema)` (new), `DemoStore.open(path)` (read-only) or
    `DemoStore.open(path, mode="a")` (append; repairs an interrupted write first).
    """

    def __init__(self, group: zarr.Group, path: str, writable: bool) -> None:
        self.root = group
        self.path = path
        self.writable = writable
        attrs = dict(group.attrs)
        info = attrs.get("il")
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise StoreError(
                f"{path} is not a DemoStore (no il format attributes); record into a new path "
                "with `il record`"
            )
        version = info.get("schema_version")
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"{path} has DemoStore schema version {version}, this il reads version "
                f"{SCHEMA_VERSION}; use the il release that wrote it, or re-record"
            )
        self.schema = StoreSchema.from_json(info)
        rewriting = info.get("rewriting")
        self._rewriting: str | None = str(rewriting) if rewriting else None
        self._lock_file: Any = None
        self._checksum_keys: list[str] | None = None
        try:
            self.refresh()
            meta = self.root["meta"]
            if "checksums" in meta:
                self._checksum_keys = list(meta["checksums"].attrs.get("keys", []))
        except (KeyError, ValueError, TypeError) as e:  # a missing or unreadable zarr.json
            raise _metadata_error(path, self.schema, e) from None

    # --- opening -------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, schema: StoreSchema) -> DemoStore:
        """A new, empty store. Fails if anything already exists at `path`.

        A local store is built in a temporary sibling directory and renamed into place, so a
        crash during creation leaves either no store or a complete empty one. On object storage
        the format attributes are written last, so a half-made store is never taken for one.
        """
        path = _normalize(path)
        for key in schema.keys:
            if not key or key.startswith("/") or ".." in key:
                raise StoreError(f"invalid key name {key!r}")
        if not _is_local(path):
            group = zarr.open_group(path, mode="w-", zarr_format=3)
            _create_layout(group, schema)
            return cls(group, path, writable=True)
        final = _local_path(path)
        if final.exists():
            raise StoreError(f"{path} already exists; open it with mode='a' to append")
        staging = final.with_name(f".{final.name}.creating-{os.getpid()}")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            _remove_dead_staging(final)
            _create_layout(zarr.open_group(str(staging), mode="w-", zarr_format=3), schema)
        except OSError as e:
            shutil.rmtree(staging, ignore_errors=True)
            raise _os_error(e, path, "creating it") from None
        lock = _take_lock(staging, str(final))
        try:
            os.rename(staging, final)
        except OSError:
            lock.close()
            shutil.rmtree(staging, ignore_errors=True)
            raise StoreError(f"{path} already exists; open it with mode='a' to append") from None
        store = cls(zarr.open_group(path, mode="r+", zarr_format=3), path, writable=True)
        store._lock_file = lock
        return store

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> DemoStore:
        """Open an existing store read-only (`r`) or for appending (`a`)."""
        path = _normalize(path)
        if mode not in ("r", "a"):
            raise StoreError(f"mode must be 'r' or 'a', got {mode!r}")
        if _is_local(path) and not _local_path(path).exists():
            raise StoreError(f"no store at {path}; record one with `il record --out {path}`")
        try:
            group = zarr.open_group(path, mode="r" if mode == "r" else "r+", zarr_format=3)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError) as e:
            not_a_store = StoreError(
                f"{path} is not a DemoStore (no zarr 3 group there); give the path of a store "
                "that `il record` made"
            )
            if _is_local(path) and (_local_path(path) / "zarr.json").exists():
                raise _metadata_error(path, None, e, otherwise=not_a_store) from None
            raise not_a_store from None
        except OSError as e:
            raise _os_error(e, path, "reading") from None
        store = cls(group, path, writable=mode == "a")
        if mode == "a":
            try:
                store._acquire_lock()
                store.repair()
            except BaseException:
                store.close()
                raise
        return store

    @classmethod
    def open_or_create(cls, path: str | os.PathLike, schema: StoreSchema) -> DemoStore:
        """Append to the store at `path` (its schema must match) or create it."""
        path = _normalize(path)
        exists = _local_path(path).exists() if _is_local(path) else _remote_exists(path)
        if not exists:
            return cls.create(path, schema)
        store = cls.open(path, mode="a")
        store.check_schema(schema)
        return store

    def _acquire_lock(self) -> None:
        if _is_local(self.path):  # object stores: one writer by convention (documented)
            self._lock_file = _take_lock(_local_path(self.path), self.path)
            _check_writable(_local_path(self.path), self.path)

    def close(self) -> None:
        """Release the writer lock (a reader has nothing to release)."""
        if self._lock_file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None
        self.writable = False

    def __enter__(self) -> DemoStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- committed state -----------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read the commit point: a reader sees episodes committed since it opened."""
        with _os_errors(self.path, "reading"):
            meta = self.root["meta"]
            ends = np.asarray(meta["episode_ends"][:], dtype=np.int64)
            data_len = min((self.root["data"][k].shape[0] for k in self.schema.keys), default=0)
            self._later_fields = [name for name in LATER_META_FIELDS if name in meta]
            meta_len = min(meta[name].shape[0] for name in (*META_FIELDS, *self._later_fields))
        n = 0
        previous = 0
        for end in ends:
            if end <= previous or end > data_len or n >= meta_len:
                break
            previous = int(end)
            n += 1
        self._episode_ends = ends[:n]

    @property
    def num_episodes(self) -> int:
        return len(self._episode_ends)

    @property
    def num_steps(self) -> int:
        return int(self._episode_ends[-1]) if self.num_episodes else 0

    @property
    def episode_ends(self) -> np.ndarray:
        return self._episode_ends.copy()

    @property
    def episode_starts(self) -> np.ndarray:
        return np.concatenate([[0], self._episode_ends[:-1]]).astype(np.int64)

    def __len__(self) -> int:
        return self.num_episodes

    def array(self, key: str) -> zarr.Array:
        """The zarr array of a per-step key (its committed part is `[:num_steps]`)."""
        if key not in self.schema.keys:
            raise StoreError(
                f"{self.path} has no key {key!r}; keys: {', '.join(sorted(self.schema.keys))}"
            )
        return self.root["data"][key]

    def episode_meta(self) -> dict[str, np.ndarray]:
        """Per-episode metadata arrays, committed episodes only."""
        n = self.num_episodes
        meta = self.root["meta"]
        with _os_errors(self.path, "reading"):
            fields = {name: np.asarray(meta[name][:n]) for name in META_FIELDS}
            for name, unknown in LATER_META_FIELDS.items():
                present = name in self._later_fields
                fields[name] = np.asarray(meta[name][:n]) if present else np.full(n, unknown)
        return fields

    @property
    def has_checksums(self) -> bool:
        """Whether episodes are committed with checksums (False: a store from before them)."""
        return self._checksum_keys is not None

    def checksums(self) -> dict[str, np.ndarray] | None:
        """Per key, the `rows_checksum` of each committed episode's rows as they were recorded:
        `(E,)` int64, -1 for an episode committed without one. None for a store made before
        checksums existed (`il info --verify` can then only check that every chunk decodes)."""
        if self._checksum_keys is None:
            return None
        n = self.num_episodes
        table = np.full((n, len(self._checksum_keys)), _NO_CHECKSUM, dtype=np.int64)
        with _os_errors(self.path, "reading"):
            sums = self.root["meta"]["checksums"]
            have = min(sums.shape[0], n)
            if have:  # a column past the named ones is one a rewrite has not named yet
                table[:have] = sums[:have, : len(self._checksum_keys)]
        return {
            key: table[:, j] for j, key in enumerate(self._checksum_keys) if key in self.schema.keys
        }

    def episode(self, index: int) -> Episode:
        if not -self.num_episodes <= index < self.num_episodes:
            raise IndexError(f"episode {index} out of range (store has {self.num_episodes})")
        index %= self.num_episodes
        starts = self.episode_starts
        meta = {k: _scalar(v[index]) for k, v in self.episode_meta().items()}
        return Episode(index, int(starts[index]), int(self._episode_ends[index]), meta)

    def episodes(self) -> Iterator[Episode]:
        meta = self.episode_meta()
        starts = self.episode_starts
        for i in range(self.num_episodes):
            yield Episode(
                i,
                int(starts[i]),
                int(self._episode_ends[i]),
                {k: _scalar(v[i]) for k, v in meta.items()},
            )

    def read_episode(self, index: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """All steps of one episode for `keys` (default: every key)."""
        ep = self.episode(index)
        with _os_errors(self.path, "reading"):
            return {k: self.array(k)[ep.start : ep.end] for k in (keys or list(self.schema.keys))}

    # --- writing -------------------------------------------------------------------------------
    def check_schema(self, schema: StoreSchema) -> None:
        """Raise naming the first key whose presence, shape or dtype differs from the store's."""
        mine, theirs = self.schema.keys, schema.keys
        for key in sorted(set(mine) | set(theirs)):
            if key not in mine:
                raise StoreError(f"key {key!r} is not in {self.path}; record into a new store")
            if key not in theirs:
                raise StoreError(f"key {key!r} of {self.path} is missing from the new data")
            a, b = mine[key], theirs[key]
            if tuple(a.shape) != tuple(b.shape) or np.dtype(a.dtype) != np.dtype(b.dtype):
                raise StoreError(
                    f"key {key!r}: store has shape {tuple(a.shape)} {np.dtype(a.dtype)}, new "
                    f"data has {tuple(b.shape)} {np.dtype(b.dtype)}"
                )

    def repair(self) -> None:
        """Trim whatever an interrupted write left after the last committed episode."""
        self._require_writable()
        self.refresh()
        n_steps, n_eps = self.num_steps, self.num_episodes
        with _os_errors(self.path, "repairing"):
            for key in self.schema.keys:
                arr = self.root["data"][key]
                if arr.shape[0] != n_steps:
                    arr.resize((n_steps, *arr.shape[1:]))
            meta = self.root["meta"]
            for name in ("episode_ends", *META_FIELDS, *self._later_fields):
                if meta[name].shape[0] != n_eps:
                    meta[name].resize((n_eps,))
            self._repair_checksums(n_eps)
            if _is_local(self.path):
                for partial in _local_path(self.path).rglob("*.partial"):
                    partial.unlink(missing_ok=True)

    def _repair_checksums(self, n_eps: int) -> None:
        """One row of checksums per committed episode. A store from before checksums gets the
        array here (its earlier episodes stay without); rows a writer that knew no checksums
        left out are marked missing rather than read as whatever a trimmed episode left."""
        meta = self.root["meta"]
        if self._checksum_keys is None:
            _create_checksums(meta, list(self.schema.keys), n_eps)
            self._checksum_keys = list(self.schema.keys)
            return
        sums = meta["checksums"]
        have = sums.shape[0]
        if have != n_eps:
            sums.resize((n_eps, sums.shape[1]))
            if n_eps > have:
                sums[have:n_eps] = _NO_CHECKSUM

    def add_episode(self, steps: Mapping[str, np.ndarray], **meta: Any) -> Episode:
        """Append one episode atomically and return it.

        `steps` maps every schema key to a `(T, *shape)` array; `meta` sets per-episode fields
        (task, instruction, success, seed, source, variation, task_seed).
        """
        self._require_writable()
        keys = self.schema.keys
        missing = set(keys) - set(steps)
        extra = set(steps) - set(keys)
        if missing:
            raise StoreError(f"episode lacks key(s) {sorted(missing)} that the store holds")
        if extra:
            raise StoreError(
                f"episode has key(s) {sorted(extra)} that {self.path} does not hold; record "
                "into a new store to add keys"
            )
        lengths = {k: len(v) for k, v in steps.items()}
        T = next(iter(lengths.values()))
        if T == 0 or any(n != T for n in lengths.values()):
            raise StoreError(f"every key needs the same, non-zero number of steps, got {lengths}")
        arrays = {}
        for k, v in steps.items():
            v = np.asarray(v)
            spec = keys[k]
            if tuple(v.shape[1:]) != tuple(spec.shape):
                raise StoreError(
                    f"key {k!r}: store has step shape {tuple(spec.shape)}, episode has "
                    f"{tuple(v.shape[1:])}"
                )
            if not np.can_cast(v.dtype, np.dtype(spec.dtype), casting="same_kind"):
                raise StoreError(f"key {k!r}: store has dtype {spec.dtype}, episode has {v.dtype}")
            arrays[k] = v.astype(spec.dtype, copy=False)
        unknown_meta = set(meta) - set(META_FIELDS) - set(LATER_META_FIELDS)
        if unknown_meta:
            raise StoreError(
                f"unknown episode field(s) {sorted(unknown_meta)}; fields: "
                f"{[*META_FIELDS, *LATER_META_FIELDS]}"
            )
        source = meta.get("source", "expert")
        if source not in SOURCES:
            raise StoreError(f"source must be one of {SOURCES}, got {source!r}")

        start, index = self.num_steps, self.num_episodes
        # Summed before anything is written, so damage on the way to disk shows too.
        sums = [rows_checksum(arrays[k]) if k in arrays else _NO_CHECKSUM for k in self._sum_keys]
        try:
            self._write_episode(arrays, meta, source, T, start, index, sums)
        except OSError as e:
            # Nothing of this episode is committed; what it left is trimmed by the next writer.
            with contextlib.suppress(Exception):
                self.refresh()
            raise _os_error(
                e,
                self.path,
                f"writing episode {index} (that episode is lost; the {index} episodes committed "
                "before it are intact)",
            ) from None
        return self.episode(index)

    @property
    def _sum_keys(self) -> list[str]:
        return self._checksum_keys if self._checksum_keys is not None else []

    def _write_episode(
        self,
        arrays: Mapping[str, np.ndarray],
        meta: Mapping[str, Any],
        source: str,
        T: int,
        start: int,
        index: int,
        sums: list[int],
    ) -> None:
        end = start + T
        # 1. per-step data (invisible until step 3)
        for k, v in arrays.items():
            arr = self.root["data"][k]
            arr.resize((end, *arr.shape[1:]))
            arr[start:end] = v
        # 2. per-episode metadata
        values = {
            "task": meta.get("task", ""),
            "instruction": meta.get("instruction", ""),
            "success": bool(meta.get("success", False)),
            "seed": int(meta.get("seed", -1)),
            "source": source,
            "length": T,
        }
        m = self.root["meta"]
        for name, unknown in LATER_META_FIELDS.items():
            if name not in self._later_fields:  # a store from before the field: add it
                m.create_array(
                    name, shape=(index,), chunks=(4096,), dtype="int64", fill_value=unknown
                )
                self._later_fields.append(name)
            values[name] = int(meta.get(name, unknown))
        for name, value in values.items():
            m[name].resize((index + 1,))
            m[name][index] = value
        if self._checksum_keys is not None:  # a store opened with mode="a" always has them
            checksums = m["checksums"]
            checksums.resize((index + 1, checksums.shape[1]))
            row = np.full(checksums.shape[1], _NO_CHECKSUM, dtype=np.int64)
            row[: len(sums)] = sums  # a column no key names yet (`rewrite_key`) gets none
            checksums[index] = row
        # 3. the commit point
        ends = m["episode_ends"]
        ends.resize((index + 1,))
        ends[index] = end
        self._episode_ends = np.append(self._episode_ends, np.int64(end))

    # --- rewriting one key ------------------------------------------------------------------------
    @property
    def rewriting(self) -> str | None:
        """The key a `rewrite_key` was rewriting when it was interrupted (None: none was): its
        rows are partly old and partly new and have no checksums until it is run again."""
        return self._rewriting

    def rewrite_key(
        self, key: str, spec: KeySpec, rows: np.ndarray, source: Mapping[str, Any]
    ) -> None:
        """Replace every committed row of the per-step key `key` by `rows` (`(num_steps,
        *spec.shape)`), adding the key where the store lacks it, and the store's `source`
        attributes by `source`: for data derived from the recording, such as labels computed
        again with other thresholds. Rows are held in memory, so this is for small keys.

        The store stays readable, and `il info --verify` clean, whenever this stops: first the
        attributes say that `key` is being rewritten (`rewriting`); then the key's checksums
        are marked missing, its rows are written (each chunk file is replaced whole), its new
        checksums are written, and last the attributes take the key's description and `source`
        and drop the mark. A key the store lacks is written under its name and a checksum column
        no key names yet, and joins the schema only with those last attributes, so readers see
        it complete or not at all. Run again after an interruption, it finishes the job.
        """
        self._require_writable()
        if not key or key.startswith("/") or ".." in key:
            raise StoreError(f"invalid key name {key!r}")
        rows = np.asarray(rows)
        n_steps, n_eps = self.num_steps, self.num_episodes
        if rows.shape != (n_steps, *spec.shape):
            raise StoreError(
                f"key {key!r}: {n_steps} rows of shape {tuple(spec.shape)} needed, got {rows.shape}"
            )
        if not np.can_cast(rows.dtype, np.dtype(spec.dtype), casting="same_kind"):
            raise StoreError(f"key {key!r}: rows of {rows.dtype} cannot be stored as {spec.dtype}")
        rows = rows.astype(spec.dtype, copy=False)
        old = self.schema.keys.get(key)
        if old is not None and (
            tuple(old.shape) != tuple(spec.shape) or np.dtype(old.dtype) != np.dtype(spec.dtype)
        ):
            raise StoreError(
                f"key {key!r} of {self.path} has shape {tuple(old.shape)} {old.dtype}; a rewrite "
                f"keeps them, got {tuple(spec.shape)} {spec.dtype}"
            )
        starts, ends = self.episode_starts, self._episode_ends
        sums = np.array(
            [rows_checksum(rows[a:b]) for a, b in zip(starts, ends, strict=True)], dtype=np.int64
        )
        doing = (
            f"rewriting {key!r} (the store stays readable; run the same command again to finish it)"
        )
        with _os_errors(self.path, doing):
            self._update_attrs(rewriting=key)
            self._rewriting = key
            data, meta = self.root["data"], self.root["meta"]
            if old is None:
                if key in data:  # what an interrupted rewrite left, never part of the schema
                    del data[key]
                array = _create_key_array(data, key, spec, n_steps)
            else:
                array = data[key]
            checksums = meta["checksums"] if self._checksum_keys is not None else None
            column = (
                self._checksum_keys.index(key)
                if self._checksum_keys is not None and key in self._checksum_keys
                else None
            )
            if checksums is not None and column is not None and n_eps:
                checksums[:n_eps, column] = _NO_CHECKSUM
            if n_steps:
                array[:n_steps] = rows
            if checksums is not None and self._checksum_keys is not None:
                named = list(self._checksum_keys)
                if column is None:
                    column = len(named)
                    if checksums.shape[1] <= column:
                        checksums.resize((checksums.shape[0], column + 1))
                if n_eps:
                    checksums[:n_eps, column] = sums
                if key not in named:
                    checksums.update_attributes({"keys": [*named, key]})
                    self._checksum_keys = [*named, key]
            keys = {**self.schema.keys, key: spec}
            self._update_attrs(
                keys={k: v.to_json() for k, v in keys.items()},
                source=dict(source),
                rewriting=None,
            )
            self._rewriting = None
            self.schema = StoreSchema(keys, self.schema.fps, self.schema.action, dict(source))

    def update_source(self, entries: Mapping[str, Any]) -> None:
        """Set `entries` of the store's `source` attributes, keeping the others: for an
        attribute that grows while recording (the phrases corrections index), written before
        the episode that needs it is committed, so no committed row points past it. The
        attributes file is replaced whole, so a crash leaves the old or the new version."""
        self._require_writable()
        source = {**self.schema.source, **entries}
        with _os_errors(self.path, "writing its attributes"):
            self._update_attrs(source=source)
        self.schema = StoreSchema(self.schema.keys, self.schema.fps, self.schema.action, source)

    def _update_attrs(self, **changes: Any) -> None:
        """Rewrite the store's attributes (`zarr.json`, one file replaced whole) with
        `changes`; a None value removes its entry."""
        info = dict(self.root.attrs["il"])
        for name, value in changes.items():
            if value is None:
                info.pop(name, None)
            else:
                info[name] = value
        self.root.attrs["il"] = info

    def _require_writable(self) -> None:
        if not self.writable:
            raise StoreError(f"{self.path} is open read-only; open it with mode='a' to append")

    # --- inspection ----------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Everything `il info` prints, as plain JSON-able data."""
        meta = self.episode_meta()
        tasks, counts = np.unique(meta["task"], return_counts=True)
        sources, source_counts = np.unique(meta["source"], return_counts=True)
        sums = self.checksums()
        checksums = None
        if sums is not None:
            summed = np.ones(self.num_episodes, dtype=bool)
            for key in self.schema.keys:
                summed &= sums[key] != _NO_CHECKSUM if key in sums else False
            checksums = {"algorithm": CHECKSUM, "episodes": int(summed.sum())}
        keys = {}
        for k, spec in self.schema.keys.items():
            arr = self.array(k)
            keys[k] = {
                "shape": [self.num_steps, *spec.shape],
                "dtype": spec.dtype,
                "chunks": list(arr.chunks),
                "compressor": _describe_codecs(arr),
                "bytes_on_disk": _bytes_on_disk(self.path, f"data/{k}"),
                "description": spec.description,
            }
        return {
            "path": self.path,
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "fps": self.schema.fps,
            "episodes": self.num_episodes,
            "steps": self.num_steps,
            "success_rate": float(meta["success"].mean()) if self.num_episodes else None,
            "tasks": {str(t): int(c) for t, c in zip(tasks, counts, strict=True)},
            "task_success_rate": {
                str(t): float(meta["success"][meta["task"] == t].mean()) for t in tasks
            },
            "sources": {str(s): int(c) for s, c in zip(sources, source_counts, strict=True)},
            "variations": variation_coverage(meta, self.schema.source.get("variations", {})),
            "action": self.schema.action,
            "source": self.schema.source,
            "checksums": checksums,
            "rewriting": self._rewriting,
            "keys": keys,
        }


def _create_layout(group: zarr.Group, schema: StoreSchema) -> None:
    """Empty arrays for every key and metadata field; the format attributes go last."""
    data = group.require_group("data")
    for key, spec in schema.keys.items():
        _create_key_array(data, key, spec, 0)
    meta = group.require_group("meta")
    meta.create_array("episode_ends", shape=(0,), chunks=(4096,), dtype="int64", fill_value=_UNSET)
    for name, dtype in META_FIELDS.items():
        meta.create_array(name, shape=(0,), chunks=(4096,), dtype=dtype)
    for name in LATER_META_FIELDS:
        meta.create_array(name, shape=(0,), chunks=(4096,), dtype="int64")
    _create_checksums(meta, list(schema.keys), 0)
    group.attrs["il"] = schema.to_json()


def _create_key_array(data: zarr.Group, key: str, spec: KeySpec, steps: int) -> zarr.Array:
    """The array of one per-step key, `steps` long, chunked and compressed for its size."""
    chunk = spec.chunk_steps or _default_chunk_steps(spec)
    return data.create_array(
        key,
        shape=(steps, *spec.shape),
        chunks=(chunk, *spec.shape),
        dtype=spec.dtype,
        compressors=_compressors(spec),
        fill_value=0,
    )


def _create_checksums(meta: zarr.Group, keys: list[str], episodes: int) -> zarr.Array:
    """`meta/checksums`: (E, K) int64, row e holding `rows_checksum` of episode e's rows of
    each of `keys` (in the order its attrs list them), -1 where none was taken."""
    return meta.create_array(
        "checksums",
        shape=(episodes, len(keys)),
        chunks=(1024, max(len(keys), 1)),
        dtype="int64",
        fill_value=_NO_CHECKSUM,
        attributes={"algorithm": CHECKSUM, "keys": keys},
    )


def variation_coverage(
    meta: Mapping[str, np.ndarray], totals: Mapping[str, int]
) -> dict[str, dict[str, Any]]:
    """Per task: the variations its episodes played (`stored`, of `total` where the recording
    said how many there are), the ones no episode plays, and every variation played by more
    than one episode with those episodes' indices. A duplicate teaches nothing new, and a
    missing one is a variation an evaluation on the recorded ones tests without a demo.
    Episodes whose variation is not known (-1) are left out; so are tasks with none known."""
    report: dict[str, dict[str, Any]] = {}
    for task in dict.fromkeys(str(t) for t in meta["task"]):
        mine = np.flatnonzero((meta["task"] == task) & (meta["variation"] >= 0))
        if not len(mine):
            continue
        played: dict[tuple[int, int], list[int]] = {}
        for i in mine:
            played.setdefault((int(meta["task_seed"][i]), int(meta["variation"][i])), []).append(
                int(i)
            )
        total = totals.get(task)
        seeds = sorted({seed for seed, _ in played})
        report[task] = {
            "task_seeds": seeds,
            "stored": len(played),
            "total": total,
            "missing": sorted(set(range(total)) - {v for _, v in played})
            if total is not None and len(seeds) == 1
            else None,
            "duplicates": [
                {"task_seed": seed, "variation": v, "episodes": episodes}
                for (seed, v), episodes in sorted(played.items())
                if len(episodes) > 1
            ],
        }
    return report


def _remove_dead_staging(final: Path) -> None:
    """Delete what a `create` killed before its rename left next to `final`."""
    for staging in final.parent.glob(f".{final.name}.creating-*"):
        pid = staging.name.rsplit("-", 1)[-1]
        alive = pid.isdigit() and int(pid) != os.getpid() and Path(f"/proc/{pid}").exists()
        if not alive:
            shutil.rmtree(staging, ignore_errors=True)


def _take_lock(directory: Path, name: str) -> Any:
    """An exclusive `flock` on `directory/.writer.lock`; the kernel drops it when the process
    dies, so a killed writer never leaves a stale lock."""
    try:
        handle = open(directory / ".writer.lock", "a+")  # noqa: SIM115 - held while writing
    except OSError as e:
        raise _os_error(e, name, "taking its writer lock") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise StoreError(
            f"{name} is being written by {owner}; wait for it to finish or stop it "
            "(readers can open the store with mode='r' meanwhile)"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle


def _scalar(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _describe_codecs(arr: zarr.Array) -> str:
    try:
        return ", ".join(
            json.dumps(c.to_dict()["configuration"]) if hasattr(c, "to_dict") else str(c)
            for c in arr.compressors
        )
    except Exception:  # description only; never fail an info call on it
        return str(arr.compressors)


def _bytes_on_disk(path: str, sub: str) -> int | None:
    if not _is_local(path):
        return None
    root = _local_path(path) / sub
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def _remote_exists(path: str) -> bool:
    try:
        zarr.open_group(path, mode="r", zarr_format=3)
        return True
    except Exception:
        return False


@contextlib.contextmanager
def _os_errors(path: str, doing: str) -> Iterator[None]:
    """OS errors inside the block as one-line `StoreError`s (see `_os_error`)."""
    try:
        yield
    except StoreError:
        raise
    except OSError as e:
        raise _os_error(e, path, doing) from None


def _os_error(error: OSError, path: str, doing: str) -> StoreError:
    """A one-line `StoreError` for an OS error met while `doing` something with the store at
    `path`: a full disk, a permission or a read-only file system, anything else as it is."""
    where = error.filename or path
    reason = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFullError(
            f"no space left on the disk of {path} while {doing}; free some space and run the "
            "command again (il record resumes where it stopped)"
        )
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        if doing == "reading":
            return StoreAccessError(
                f"cannot read {where}: {reason}; give this user read access to the store "
                f"(chmod -R u+rX {path})"
            )
        return StoreAccessError(
            f"cannot write {path} while {doing}: {reason} ({where}); record into a folder you "
            f"can write, or make it writable (chmod -R u+w {path}); reading needs no write access"
        )
    return StoreError(f"{path}: {doing} failed: {reason} ({where})")


def _check_writable(root: Path, name: str) -> None:
    """Fail at open, not at the first episode, when the store's folder takes no new files
    (a lock file left by an earlier writer opens even in a read-only folder)."""
    probe = root / ".write-probe"  # one name: the writer lock is held, no other writer probes
    try:
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise _os_error(e, name, "opening it to append") from None


def _metadata_error(
    path: str,
    schema: StoreSchema | None,
    error: Exception,
    otherwise: StoreError | None = None,
) -> StoreError:
    """Which metadata document (`zarr.json`) of the store is missing or unreadable, in one line
    (`otherwise` when every document reads: the error was not about them).

    zarr names no file when a document is empty or cut short, so on a local disk every document
    the store needs is checked by itself."""
    if _is_local(path):
        root = _local_path(path)
        nodes = [""]
        if schema is not None:
            nodes += ["data", "meta", *(f"data/{k}" for k in schema.keys)]
            nodes += [f"meta/{name}" for name in ("episode_ends", *META_FIELDS)]
            if (root / "meta" / "checksums").exists():
                nodes.append("meta/checksums")
        for node in nodes:
            document = root / node / "zarr.json"
            try:
                text = document.read_bytes()
                json.loads(text)
                continue
            except FileNotFoundError:
                problem = "is missing"
            except ValueError:
                problem = "is empty" if not text.strip() else "is not valid JSON"
            except OSError as e:
                return StoreAccessError(
                    f"cannot read {document}: {e.strerror or e}; give this user read access "
                    f"to the store (chmod -R u+rX {path})"
                )
            what = f"array {node!r}" if "/" in node else (f"group {node!r}" if node else "root")
            fix = (
                "delete the folder meta/checksums to use the store without checksums"
                if node == "meta/checksums"
                else "restore that file from a copy of the store; until then the store cannot "
                "be read"
            )
            return StoreDamagedError(
                f"{path}: the metadata of its {what} ({document}) {problem}; {fix}"
            )
    if otherwise is not None:
        return otherwise
    return StoreDamagedError(
        f"{path}: the store's metadata cannot be read ({type(error).__name__}: {error}); "
        "restore it from a copy of the store, or record into a new path"
    )
