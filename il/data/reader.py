"""Fast random access to the steps of one DemoStore key, for the window sampler.

A plain zarr 3 read (`array[i:i + 2]`) costs about a millisecond whatever the chunking: each call
goes through zarr's asyncio machinery on a background thread. Training reads tens of thousands of
short windows per second, so the sampler reads differently, per key:

- `memory`: small keys (state, action, labels) are read once, in whole chunks, into one numpy
  array per process; a window is then a fancy index into RAM.
- `chunks`: large keys (images) of a local store are read chunk by chunk straight from their
  files and decoded with the codec zarr wrote them with (Blosc), skipping zarr's request path.
  Decoded chunks stay in a small LRU cache, so neighbouring windows and whole-episode replay
  decode each chunk once.
- `zarr`: anything else (object storage, codecs we do not decode ourselves) goes through zarr,
  still a whole chunk at a time and through the same cache.

Every reader only ever returns committed steps: its length is fixed when it is made.

A chunk that does not decode (or decodes to the wrong size) is an `UnreadableChunkError` naming
its file, never a codec's bare error. A reader that loads a key into memory notes such chunks
in `damaged_chunks` and goes on, so the episodes they hold can be reported, and skipped, all at
once (`il.data.integrity`).
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec
from zarr.storage import LocalStore

from il.data.store import StoreDamagedError, StoreError, _os_error

__all__ = ["StepReader", "UnreadableChunkError"]


class UnreadableChunkError(StoreDamagedError):
    """A chunk file of a per-step key that does not decode to a chunk of its array."""

    def __init__(self, file: str, key: str, chunk: int, problem: str, store: str) -> None:
        super().__init__(
            f"{file}, a chunk of key {key!r}, {problem}: the store is damaged; "
            f"`il info {store} --verify` lists the episodes it holds"
        )
        self.file, self.key, self.chunk, self.problem = file, key, chunk, problem


class StepReader:
    """Random access to steps `[0, length)` of one per-step zarr array."""

    def __init__(
        self,
        array: zarr.Array,
        length: int,
        *,
        in_memory: bool,
        cache_bytes: int = 64 * 2**20,
    ) -> None:
        self.array = array
        self.length = int(length)
        self.step_shape = tuple(array.shape[1:])
        self.dtype = np.dtype(array.dtype)
        self.chunk_steps = int(array.chunks[0])
        self._chunk_shape = tuple(array.chunks)
        self._chunk_bytes = int(np.prod(self._chunk_shape)) * self.dtype.itemsize
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_slots = max(2, cache_bytes // max(self._chunk_bytes, 1))
        self._decode = _direct_decoder(array)
        self._chunk_dir = _chunk_dir(array) if self._decode is not None else None
        self.mode = "memory" if in_memory else ("chunks" if self._decode else "zarr")
        self.key = str(array.path).removeprefix("data/")
        self.store_path = _store_path(array)
        self.damaged_chunks: dict[int, UnreadableChunkError] = {}
        """Chunks that did not decode while loading into memory (their steps read as zeros)."""
        self._all: np.ndarray | None = None
        if in_memory:
            self._all = self._read_range(0, self.length, note_damage=True)

    @property
    def nbytes(self) -> int:
        """Bytes of the committed steps, decoded."""
        return self.length * int(np.prod(self.step_shape, dtype=np.int64)) * self.dtype.itemsize

    def take(self, steps: np.ndarray) -> np.ndarray:
        """The steps at the given indices (any order, repeats allowed): `(n, *step_shape)`."""
        if self._all is not None:
            return self._all[steps]
        steps = np.asarray(steps, dtype=np.int64)
        out = np.empty((len(steps), *self.step_shape), dtype=self.dtype)
        if len(steps) == 0:
            return out
        chunk_of = steps // self.chunk_steps
        for c in np.unique(chunk_of):
            sel = chunk_of == c
            out[sel] = self._chunk(int(c))[steps[sel] - c * self.chunk_steps]
        return out

    def read(self, start: int, stop: int) -> np.ndarray:
        """Steps `[start, stop)` in order, e.g. a whole episode."""
        if self._all is not None:
            return self._all[start:stop]
        return self._read_range(start, stop)

    def chunk_rows(self, index: int) -> np.ndarray:
        """The committed steps of chunk `index`, for a pass over whole chunks (checking
        episodes' checksums): a view of RAM for a key held in memory, else decoded from disk
        without filling the cache. A chunk that does not decode raises `UnreadableChunkError`."""
        n = self.chunk_steps
        lo, hi = index * n, min((index + 1) * n, self.length)
        if self._all is not None:
            if index in self.damaged_chunks:
                raise self.damaged_chunks[index]
            return self._all[lo:hi]
        return self._chunk(index, cache=False)[: hi - lo]

    def chunk_file(self, index: int) -> str:
        """Where chunk `index` lives: a file of a local store, else the store's URL and key."""
        key = self.array.metadata.encode_chunk_key((index, *(0 for _ in self.step_shape)))
        return f"{self.store_path.rstrip('/')}/{self.array.path}/{key}"

    def chunk_files(self, first: int, last: int) -> str:
        """Chunks `first..last` as one shell-style path: `.../c/{3..7}/0/0/0`."""
        if first == last:
            return self.chunk_file(first)
        marker = 987654321  # a number no real chunk path holds, replaced by the range
        return self.chunk_file(marker).replace(str(marker), f"{{{first}..{last}}}")

    # --- chunks ----------------------------------------------------------------------------------
    def _read_range(self, start: int, stop: int, note_damage: bool = False) -> np.ndarray:
        out = np.empty((max(stop - start, 0), *self.step_shape), dtype=self.dtype)
        if stop <= start:
            return out
        n = self.chunk_steps
        for c in range(start // n, (stop - 1) // n + 1):
            lo, hi = max(start, c * n), min(stop, (c + 1) * n)
            try:
                chunk = self._chunk(c, cache=False)
            except UnreadableChunkError as e:
                if not note_damage:
                    raise
                self.damaged_chunks[c] = e
                chunk = np.zeros(self._chunk_shape, dtype=self.dtype)
            out[lo - start : hi - start] = chunk[lo - c * n : hi - c * n]
        return out

    def _chunk(self, index: int, cache: bool = True) -> np.ndarray:
        hit = self._cache.get(index)
        if hit is not None:
            self._cache.move_to_end(index)
            return hit
        chunk = self._load(index)
        if cache:
            self._cache[index] = chunk
            if len(self._cache) > self._cache_slots:
                self._cache.popitem(last=False)
        return chunk

    def _load(self, index: int) -> np.ndarray:
        try:
            if self._decode is None or self._chunk_dir is None:
                n = self.chunk_steps
                return self.array[index * n : min((index + 1) * n, self.length)]
            key = self.array.metadata.encode_chunk_key((index, *(0 for _ in self.step_shape)))
            try:
                raw = (self._chunk_dir / key).read_bytes()
            except FileNotFoundError:  # never written: zarr leaves fill-value chunks out
                return np.full(self._chunk_shape, self.array.fill_value, dtype=self.dtype)
            return self._decode(raw).reshape(self._chunk_shape)
        except StoreError:
            raise
        except OSError as e:
            raise _os_error(e, self.store_path, "reading") from None
        except Exception as e:  # a codec's error (Blosc's "-1"), or a chunk of the wrong size
            problem = f"cannot be decoded ({e or type(e).__name__})"
            raise UnreadableChunkError(
                self.chunk_file(index), self.key, index, problem, self.store_path
            ) from None


def _direct_decoder(array: zarr.Array) -> Any:
    """A function from a chunk file's bytes to its flat array, when we can decode the chunk
    exactly as zarr would: a local store, no sharding, bytes codec in native order, then at
    most one Blosc codec. Otherwise None (zarr reads it)."""
    if not isinstance(array.store, LocalStore):
        return None
    codecs = list(array.metadata.codecs)
    if not codecs or not isinstance(codecs[0], BytesCodec):
        return None
    endian = codecs[0].endian
    native = sys.byteorder == "little"
    if array.dtype.itemsize > 1 and endian is not None and (endian.value == "little") != native:
        return None
    dtype = np.dtype(array.dtype)
    rest = codecs[1:]
    if not rest:
        return lambda raw: np.frombuffer(raw, dtype=dtype)
    if len(rest) == 1 and isinstance(rest[0], BloscCodec):
        from numcodecs import blosc

        return lambda raw: np.frombuffer(blosc.decompress(raw), dtype=dtype)
    return None


def _chunk_dir(array: zarr.Array) -> Path:
    return Path(array.store.root) / array.path


def _store_path(array: zarr.Array) -> str:
    """The store's folder (local) or URL, for messages."""
    store = array.store
    if isinstance(store, LocalStore):
        return str(store.root)
    fs = getattr(store, "fs", None)
    path = str(getattr(store, "path", ""))
    protocol = getattr(fs, "protocol", None)
    if protocol:
        protocol = protocol[0] if isinstance(protocol, (tuple, list)) else protocol
        return f"{protocol}://{path.lstrip('/')}" if protocol != "file" else path
    return path or str(store)
