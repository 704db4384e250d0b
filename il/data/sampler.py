"""Training windows from a DemoStore: past observations, future actions, never across episodes.

A window is anchored at one step t of an episode, the step at which a policy acts. Every key
the method asks for gets a range of steps relative to t: observations `t - obs_horizon + 1 .. t`,
actions `t .. t + action_horizon - 1`, any other per-step key (language motion, procedure,
reward, ...) the range the method names. Steps before the episode's first or after its last
step repeat that edge step, and `<key>_is_pad` (True where a step was repeated) lets a loss
ignore them. Every step of every selected episode is an anchor, so a dataset of N steps yields
N windows.

The sampler works on committed episodes only and reads through `StepReader`s, which keep small
keys in memory and decode image chunks straight from disk. It opens its store lazily, once per
process, so a torch DataLoader may fork or spawn workers at any time (zarr's I/O thread is never
shared across a fork).

Before anything trains on a sampler, `intact` checks the episodes it covers against the
checksums taken when they were committed (`il.data.integrity`), reading through the sampler's own
readers: a key held in memory is checked in RAM right after the load training needs anyway.
Damaged episodes are refused in one line, or left out when asked.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from il.data.reader import StepReader
from il.data.store import Damage, DemoStore, StoreDamagedError, StoreError

__all__ = [
    "WindowDataset",
    "WindowSampler",
    "intact",
    "select_episodes",
    "split_episodes",
    "window_spec",
]

log = logging.getLogger(__name__)


def window_spec(
    obs_keys: Sequence[str],
    obs_horizon: int,
    action_keys: Sequence[str] = ("action",),
    action_horizon: int = 1,
    extra: Mapping[str, tuple[int, int]] | None = None,
) -> dict[str, tuple[int, int]]:
    """Key → (first, last) step offsets relative to the anchor, both inclusive.

    `extra` adds any other per-step key with its own offsets, e.g. `{"language_motion": (0, 0)}`.
    """
    if obs_horizon < 1 or action_horizon < 1:
        raise ValueError("obs_horizon and action_horizon must be at least 1")
    spec = {k: (1 - obs_horizon, 0) for k in obs_keys}
    spec.update({k: (0, action_horizon - 1) for k in action_keys})
    for key, (first, last) in (extra or {}).items():
        if last < first:
            raise ValueError(f"{key}: last offset {last} is before first offset {first}")
        spec[key] = (int(first), int(last))
    return spec


def select_episodes(
    store: DemoStore,
    *,
    tasks: Iterable[str] | None = None,
    sources: Iterable[str] | None = None,
    success: bool | None = None,
    episodes: Iterable[int] | None = None,
) -> np.ndarray:
    """Indices of committed episodes that pass every given filter, in store order."""
    meta = store.episode_meta()
    task_of = np.array([str(t) for t in meta["task"]], dtype=object)
    source_of = np.array([str(s) for s in meta["source"]], dtype=object)
    keep = np.ones(store.num_episodes, dtype=bool)
    if tasks is not None:
        tasks = list(tasks)
        unknown = sorted(set(tasks) - set(task_of))
        if unknown:
            raise StoreError(
                f"no episodes of task(s) {unknown} in {store.path}; `il info` lists its tasks"
            )
        keep &= np.isin(task_of, tasks)
    if sources is not None:
        keep &= np.isin(source_of, list(sources))
    if success is not None:
        keep &= meta["success"] == success
    if episodes is not None:
        wanted = np.asarray(list(episodes), dtype=np.int64)
        outside = wanted[(wanted < 0) | (wanted >= store.num_episodes)]
        if len(outside):
            raise StoreError(
                f"episode(s) {outside[:3].tolist()} do not exist: {store.path} has episodes "
                f"0..{store.num_episodes - 1}"
            )
        chosen = np.zeros_like(keep)
        chosen[wanted] = True
        keep &= chosen
    return np.flatnonzero(keep)


def split_episodes(
    episodes: np.ndarray, val_fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation episode indices: a seeded shuffle, at least one validation episode
    when `val_fraction > 0` and at least one training episode. Both come back sorted."""
    episodes = np.asarray(episodes, dtype=np.int64)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = (
        0
        if val_fraction == 0
        else min(max(1, round(val_fraction * len(episodes))), len(episodes) - 1)
    )
    order = np.random.default_rng(seed).permutation(len(episodes))
    return np.sort(episodes[order[n_val:]]), np.sort(episodes[order[:n_val]])


@dataclass
class _Layout:
    """Anchor steps and episode bounds of the selected episodes (pure data: cheap to pickle)."""

    anchors: np.ndarray  # (N,) global step index of each window's anchor
    starts: np.ndarray  # (N,) first step of the anchor's episode
    ends: np.ndarray  # (N,) one past the last step
    episodes: np.ndarray  # (N,) store index of the anchor's episode


def _layout(store: DemoStore, episodes: np.ndarray) -> _Layout:
    starts, ends = store.episode_starts[episodes], store.episode_ends[episodes]
    lengths = ends - starts
    anchors = np.concatenate(
        [np.arange(s, e, dtype=np.int64) for s, e in zip(starts, ends, strict=True)]
        or [np.zeros(0, np.int64)]
    )
    return _Layout(
        anchors, np.repeat(starts, lengths), np.repeat(ends, lengths), np.repeat(episodes, lengths)
    )


class WindowSampler:
    """Windows of a DemoStore; `sampler[i]` is a dict of `(L, *step_shape)` arrays and
    `<key>_is_pad` masks.

    `keys` maps each key to its (first, last) offsets; build it with `window_spec`.
    Keys whose committed data fits in `memory_bytes` (smallest first) are held in RAM; the others
    are read a chunk at a time with an LRU cache of `cache_bytes` per key.
    """

    def __init__(
        self,
        store: DemoStore | str,
        keys: Mapping[str, tuple[int, int]],
        episodes: Sequence[int] | np.ndarray | None = None,
        *,
        memory_bytes: int = 256 * 2**20,
        cache_bytes: int = 64 * 2**20,
    ) -> None:
        self._path = store if isinstance(store, str) else store.path
        self._store = store if isinstance(store, DemoStore) else None
        opened = self._open_store()
        missing = [k for k in keys if k not in opened.schema.keys]
        if missing:
            raise StoreError(
                f"{self._path} has no key(s) {missing}; "
                f"keys: {', '.join(sorted(opened.schema.keys))}"
            )
        self.keys = {k: (int(a), int(b)) for k, (a, b) in keys.items()}
        if episodes is None:
            episodes = np.arange(opened.num_episodes)
        self.episodes = np.asarray(episodes, dtype=np.int64)
        if len(self.episodes) and (
            self.episodes.max() >= opened.num_episodes or self.episodes.min() < 0
        ):
            raise StoreError(
                f"episode index out of range: {self._path} has {opened.num_episodes} committed"
            )
        self.num_steps = opened.num_steps  # the committed steps this sampler may read
        self._layout = _layout(opened, self.episodes)
        self.memory_bytes = int(memory_bytes)
        self.cache_bytes = int(cache_bytes)
        self._offsets = {k: np.arange(a, b + 1, dtype=np.int64) for k, (a, b) in self.keys.items()}
        self._readers: dict[str, StepReader] | None = None
        self._pid = -1
        self._damage_checked = False

    # --- per-process state ----------------------------------------------------------------------
    def _open_store(self) -> DemoStore:
        if self._store is None:
            self._store = DemoStore.open(self._path)
        return self._store

    def readers(self) -> dict[str, StepReader]:
        """This process's readers, made on first use (and again in a forked child). A chunk of
        this sampler's episodes that did not decode while loading is an error here, so damaged
        data never reaches a batch as zeros."""
        readers = self._load_readers()
        if not self._damage_checked:
            self._refuse_unreadable_chunks(readers)
            self._damage_checked = True
        return readers

    def _load_readers(self) -> dict[str, StepReader]:
        if self._readers is None or self._pid != os.getpid():
            if self._pid not in (-1, os.getpid()):
                self._store = None  # a forked child opens the store afresh
            store = self._open_store()
            sizes = {k: _committed_bytes(store, k, self.num_steps) for k in self.keys}
            budget, in_memory = self.memory_bytes, set()
            for key in sorted(sizes, key=sizes.get):
                if sizes[key] <= budget:
                    in_memory.add(key)
                    budget -= sizes[key]
            self._readers = {
                k: StepReader(
                    store.array(k),
                    self.num_steps,
                    in_memory=k in in_memory,
                    cache_bytes=self.cache_bytes,
                )
                for k in self.keys
            }
            self._pid = os.getpid()
        return self._readers

    def _refuse_unreadable_chunks(self, readers: Mapping[str, StepReader]) -> None:
        starts, ends = self._layout.starts, self._layout.ends
        for reader in readers.values():
            n = reader.chunk_steps
            for chunk, error in reader.damaged_chunks.items():
                if np.any((starts < (chunk + 1) * n) & (ends > chunk * n)):
                    raise error

    def find_damage(self) -> list[Damage]:
        """The damaged (episode, key) pairs among this sampler's episodes and keys, read through
        its readers: keys held in memory are loaded (as the first batch would) and checked in
        RAM; keys streamed from disk are read once, chunk by chunk."""
        from il.data.integrity import find_damage

        readers = self._load_readers()
        return find_damage(self._open_store(), self.keys, self.episodes, readers=readers)

    def without(self, episodes: Iterable[int]) -> WindowSampler:
        """The same sampler minus `episodes`, sharing this process's readers (no second load)."""
        other = copy.copy(self)
        other.episodes = self.episodes[~np.isin(self.episodes, list(episodes))]
        other._layout = _layout(self._open_store(), other.episodes)
        other._damage_checked = False
        return other

    def release(self) -> None:
        """Drop this process's readers and the data they hold (e.g. once DataLoader workers,
        which load their own, have taken over)."""
        self._readers, self._pid = None, -1

    def __getstate__(self) -> dict[str, Any]:
        # Workers get the plan, not open stores or decoded data.
        state = self.__dict__.copy()
        state.update(_store=None, _readers=None, _pid=-1, _damage_checked=False)
        return state

    # --- windows -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._layout.anchors)

    def steps(self, index: int, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Global step indices of `key`'s window `index` (edges repeated) and its pad mask."""
        anchor = self._layout.anchors[index]
        wanted = anchor + self._offsets[key]
        start, end = self._layout.starts[index], self._layout.ends[index]
        return np.clip(wanted, start, end - 1), (wanted < start) | (wanted >= end)

    @property
    def window_episodes(self) -> np.ndarray:
        """(N,) the store index of each window's episode (e.g. to look up its task)."""
        return self._layout.episodes

    def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Windows `indices` stacked: `(B, L, *step_shape)` per key and `(B, L)` pad masks, read
        with one gather per key instead of one per window."""
        indices = np.asarray(indices, dtype=np.int64)
        readers = self.readers()
        anchor = self._layout.anchors[indices][:, None]
        start = self._layout.starts[indices][:, None]
        end = self._layout.ends[indices][:, None]
        out: dict[str, np.ndarray] = {}
        for key in self.keys:
            wanted = anchor + self._offsets[key][None, :]  # b l
            steps = np.clip(wanted, start, end - 1)
            values = readers[key].take(steps.reshape(-1))
            out[key] = values.reshape(*steps.shape, *values.shape[1:])
            out[f"{key}_is_pad"] = (wanted < start) | (wanted >= end)
        return out

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"window {index} out of range ({len(self)} windows)")
        index %= len(self)
        readers = self.readers()
        out: dict[str, np.ndarray] = {}
        for key in self.keys:
            steps, pad = self.steps(index, key)
            out[key] = readers[key].take(steps)
            out[f"{key}_is_pad"] = pad
        return out


def intact(
    samplers: Sequence[WindowSampler | None], *, skip_damaged: bool = False, fix: str = ""
) -> list[WindowSampler | None]:
    """The samplers, checked for damaged episodes before anything is made from them.

    Damage is a `StoreDamagedError` naming the damaged episodes, keys and files in one line
    (ending with `fix`, what the caller's user can do about it); with `skip_damaged`, the
    damaged episodes are left out of every sampler instead, with a warning saying how many. A
    sampler left with no episode becomes None (the first one, the training set, is an error).
    """
    present = [s for s in samplers if s is not None]
    if not present:
        return list(samplers)
    damage = [d for s in present for d in s.find_damage()]
    if not damage:
        return list(samplers)
    store = present[0]._open_store()
    checked = sum(len(s.episodes) for s in present)
    damaged = sorted({d.episode for d in damage})
    if not skip_damaged:
        from il.data.integrity import damage_error

        raise damage_error(store, damage, checked, fix or "leave them out (skip_damaged)")
    log.warning(
        "skipping %d damaged episode(s) of %s (%s); %d episode(s) remain",
        len(damaged),
        store.path,
        ", ".join(str(e) for e in damaged[:10]) + (", ..." if len(damaged) > 10 else ""),
        checked - len(damaged),
    )
    out: list[WindowSampler | None] = []
    for i, sampler in enumerate(samplers):
        kept = None if sampler is None else sampler.without(damaged)
        if kept is not None and len(kept.episodes) == 0:
            if i == 0:
                raise StoreDamagedError(
                    f"every episode {store.path} would train on is damaged; "
                    f"`il info {store.path} --verify` lists them"
                )
            kept = None
        out.append(kept)
    return out


def _committed_bytes(store: DemoStore, key: str, steps: int) -> int:
    spec = store.schema.keys[key]
    return steps * int(np.prod(spec.shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize


class WindowDataset(torch.utils.data.Dataset):
    """A torch `Dataset` over a `WindowSampler`: the same windows as torch tensors.

    Images stay uint8 (`b t h w c` after batching): converting to float on the GPU is cheaper
    than shipping four times the bytes through the DataLoader.
    """

    def __init__(self, sampler: WindowSampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.sampler[index].items()
        }
