"""Normalization statistics of DemoStore keys, computed in one streaming pass.

Policies see observations and actions scaled to a common range (min/max to [-1, 1] for
diffusion heads and bounded actions, mean/std for regression inputs). The statistics come from
the training episodes only, are computed a block of steps at a time (never the whole key in
memory) with exact pairwise merging of per-block moments (Chan et al.), and travel inside every
checkpoint, so a deployed policy scales its inputs exactly as in training.

Vector keys get statistics per dimension; image keys (`h w c`, uint8) per channel.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from il.data.store import DemoStore

__all__ = ["KeyStats", "Normalizer", "compute_stats"]

MODES = ("min_max", "mean_std", "identity")
_EPS = 1e-8


@dataclass(frozen=True)
class KeyStats:
    """Statistics of one key over its reduced axes (float64)."""

    min: np.ndarray
    max: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    count: int

    def to_json(self) -> dict[str, Any]:
        return {
            "min": self.min.tolist(),
            "max": self.max.tolist(),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "count": self.count,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> KeyStats:
        return cls(
            *(np.asarray(d[f], dtype=np.float64) for f in ("min", "max", "mean", "std")),
            int(d["count"]),
        )


def _reduce_axes(ndim: int, is_image: bool) -> tuple[int, ...]:
    """Axes of a `(T, *step)` block that statistics are taken over."""
    return tuple(range(ndim - 1)) if is_image else (0,)


class _Moments:
    """Running count, mean, sum of squared deviations, min and max (Chan's parallel update)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None
        self.min: np.ndarray | None = None
        self.max: np.ndarray | None = None

    def add(self, block: np.ndarray, axes: tuple[int, ...]) -> None:
        x = block.astype(np.float64, copy=False)
        n = int(np.prod([x.shape[a] for a in axes]))
        if n == 0:
            return
        mean = x.mean(axis=axes)
        m2 = ((x - np.expand_dims(mean, axes)) ** 2).sum(axis=axes)
        lo, hi = x.min(axis=axes), x.max(axis=axes)
        if self.n == 0:
            self.n, self.mean, self.m2, self.min, self.max = n, mean, m2, lo, hi
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.n * n / total)
        self.min, self.max = np.minimum(self.min, lo), np.maximum(self.max, hi)
        self.n = total

    def stats(self) -> KeyStats:
        if self.n == 0 or self.mean is None:
            raise ValueError("no steps to compute statistics from")
        std = np.sqrt(self.m2 / self.n)
        return KeyStats(self.min, self.max, self.mean, std, self.n)


def compute_stats(
    store: DemoStore,
    keys: Iterable[str],
    episodes: np.ndarray | None = None,
    block_steps: int = 4096,
) -> dict[str, KeyStats]:
    """Statistics of `keys` over the steps of `episodes` (default: all committed), reading at
    most `block_steps` steps of one key at a time."""
    from il.data.reader import StepReader

    if episodes is None:
        episodes = np.arange(store.num_episodes)
    starts, ends = store.episode_starts[episodes], store.episode_ends[episodes]
    # Adjacent episodes form one contiguous run: fewer, larger reads.
    runs: list[list[int]] = []
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        if runs and runs[-1][1] == s:
            runs[-1][1] = e
        else:
            runs.append([s, e])
    out = {}
    for key in keys:
        spec = store.schema.keys[key]
        is_image = len(spec.shape) == 3  # h w c: statistics per channel
        axes = _reduce_axes(1 + len(spec.shape), is_image)
        reader = StepReader(store.array(key), store.num_steps, in_memory=False, cache_bytes=0)
        step = max(block_steps, reader.chunk_steps) // reader.chunk_steps * reader.chunk_steps
        moments = _Moments()
        for s, e in runs:
            for lo in range(s, e, step):
                moments.add(reader.read(lo, min(lo + step, e)), axes)
        out[key] = moments.stats()
    return out


class Normalizer:
    """Scales keys to and from the range a network sees, per key and mode.

    `min_max` maps [min, max] to [-1, 1] (a dimension that never varies maps to 0);
    `mean_std` subtracts the mean and divides by the std; `identity` leaves the key alone.
    """

    def __init__(self, stats: Mapping[str, KeyStats], modes: Mapping[str, str]) -> None:
        for key, mode in modes.items():
            if mode not in MODES:
                raise ValueError(f"normalization mode of {key!r} must be one of {MODES}, got {mode!r}")
            if mode != "identity" and key not in stats:
                raise ValueError(f"no statistics for {key!r}; compute them with compute_stats")
        self.stats = dict(stats)
        self.modes = dict(modes)

    @classmethod
    def from_store(
        cls, store: DemoStore, modes: Mapping[str, str], episodes: np.ndarray | None = None
    ) -> Normalizer:
        keys = [k for k, m in modes.items() if m != "identity"]
        return cls(compute_stats(store, keys, episodes), modes)

    def scale_offset(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """`normalized = (x - offset) / scale`."""
        st, mode = self.stats[key], self.modes[key]
        if mode == "min_max":
            half = (st.max - st.min) / 2
            return np.where(half > _EPS, half, 1.0), np.where(half > _EPS, (st.max + st.min) / 2, st.min)
        return np.where(st.std > _EPS, st.std, 1.0), st.mean

    def normalize(self, key: str, x: Any) -> Any:
        """`x` (numpy or torch, trailing axes as stored) in the network's range."""
        if self.modes.get(key, "identity") == "identity":
            return x
        scale, offset = self.scale_offset(key)
        return (x - _like(offset, x)) / _like(scale, x)

    def unnormalize(self, key: str, y: Any) -> Any:
        """The inverse of `normalize`."""
        if self.modes.get(key, "identity") == "identity":
            return y
        scale, offset = self.scale_offset(key)
        return y * _like(scale, y) + _like(offset, y)

    def to_json(self) -> dict[str, Any]:
        return {
            "modes": self.modes,
            "stats": {k: v.to_json() for k, v in self.stats.items()},
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Normalizer:
        return cls({k: KeyStats.from_json(v) for k, v in d["stats"].items()}, d["modes"])

    def save(self, path: str) -> None:
        """JSON with every float written exactly (Python's shortest round-trip repr)."""
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=1)

    @classmethod
    def load(cls, path: str) -> Normalizer:
        with open(path) as f:
            return cls.from_json(json.load(f))


def _like(value: np.ndarray, x: Any) -> Any:
    """`value` as the same kind of array as `x` (torch tensor on its device, or numpy)."""
    if hasattr(x, "new_tensor"):
        return x.new_tensor(value.astype(np.float32) if x.is_floating_point() else value)
    return value.astype(x.dtype) if np.issubdtype(np.asarray(x).dtype, np.floating) else value
