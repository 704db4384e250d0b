"""Finding damaged episodes: every chunk an episode's rows live in, decoded and checked against
the checksums the store took when the episode was committed.

Where it sits: `il info --verify` runs it over a whole store; the window sampler runs it over the
episodes it trains on, through the very readers it trains from, so a key held in memory is
checked in RAM right after the one load training needs anyway, and only keys streamed from disk
cost a pass of their own; `il replay` checks the one episode it sends.

An episode is damaged in a key when a chunk holding its rows does not decode (every episode
touching that chunk is), or when its rows, decoded, do not sum to the checksum taken at commit.
Checksums run over the rows chunk by chunk (CRC-32 continues across pieces), so no episode is
ever assembled just to be checked. A store from before checksums can only be checked for chunks
that decode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from il.data.reader import StepReader, UnreadableChunkError
from il.data.store import Damage, DemoStore, StoreDamagedError, rows_checksum

__all__ = ["chunks_to_check", "damage_error", "find_damage"]

_NO_CHECKSUM = -1


def find_damage(
    store: DemoStore,
    keys: Iterable[str] | None = None,
    episodes: Sequence[int] | np.ndarray | None = None,
    *,
    readers: Mapping[str, StepReader] | None = None,
    on_chunk: Callable[[], None] | None = None,
) -> list[Damage]:
    """Every damaged (episode, key) among `episodes` (default: all committed) and `keys`
    (default: every key), in episode order. `readers` are used where given (a sampler's, with
    keys already in memory); other keys are streamed from disk a chunk at a time. `on_chunk` is
    called after each chunk, for a progress bar (`chunks_to_check` gives the total)."""
    keys = list(store.schema.keys if keys is None else keys)
    episodes = _sorted_episodes(store, episodes)
    sums = store.checksums() or {}
    damage: list[Damage] = []
    for key in keys:
        reader = (readers or {}).get(key) or StepReader(
            store.array(key), store.num_steps, in_memory=False, cache_bytes=0
        )
        damage += _check_key(store, reader, key, episodes, sums.get(key), on_chunk)
    return sorted(damage, key=lambda d: (d.episode, keys.index(d.key)))


def chunks_to_check(
    store: DemoStore,
    keys: Iterable[str] | None = None,
    episodes: Sequence[int] | np.ndarray | None = None,
) -> int:
    """How many chunks `find_damage` decodes for the same arguments."""
    episodes = _sorted_episodes(store, episodes)
    total = 0
    for key in store.schema.keys if keys is None else keys:
        total += len(_chunks_of(store, store.array(key).chunks[0], episodes)[0])
    return total


def damage_error(
    store: DemoStore, damage: Sequence[Damage], checked: int, fix: str
) -> StoreDamagedError:
    """One line naming the damaged episodes, keys and files (the first few), then what to do:
    `fix` ends it, e.g. "pass --skip-damaged to train on the other 38"."""
    episodes = sorted({d.episode for d in damage})
    shown = "; ".join(d.describe() for d in damage[:3])
    more = f"; and {len(damage) - 3} more" if len(damage) > 3 else ""
    return StoreDamagedError(
        f"{store.path} is damaged: {len(episodes)} of {checked} episode(s) do not read back as "
        f"recorded: {shown}{more}. `il info {store.path} --verify` lists them all; re-record "
        f"them, or {fix}",
        tuple(damage),
    )


def _sorted_episodes(store: DemoStore, episodes: Sequence[int] | np.ndarray | None) -> np.ndarray:
    if episodes is None:
        return np.arange(store.num_episodes, dtype=np.int64)
    return np.unique(np.asarray(episodes, dtype=np.int64))


def _chunks_of(
    store: DemoStore, chunk_steps: int, episodes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The chunks holding any step of `episodes` (sorted), and each episode's first and last."""
    starts, ends = store.episode_starts[episodes], store.episode_ends[episodes]
    first, last = starts // chunk_steps, (ends - 1) // chunk_steps
    if len(episodes) == 0:
        return np.zeros(0, np.int64), first, last
    spans = [np.arange(a, b + 1) for a, b in zip(first.tolist(), last.tolist(), strict=True)]
    return np.unique(np.concatenate(spans)), first, last


def _check_key(
    store: DemoStore,
    reader: StepReader,
    key: str,
    episodes: np.ndarray,
    expected: np.ndarray | None,
    on_chunk: Callable[[], None] | None,
) -> list[Damage]:
    n = reader.chunk_steps
    chunks, first, last = _chunks_of(store, n, episodes)
    starts = store.episode_starts[episodes].tolist()
    ends = store.episode_ends[episodes].tolist()
    running = [0] * len(episodes)
    # Without a checksum to compare to (a store from before them), only decoding is checked.
    summing = expected is not None and bool((expected[episodes] != _NO_CHECKSUM).any())
    damaged: dict[int, Damage] = {}
    lowest = 0  # episodes are sorted and disjoint: those ending before this chunk are done
    for c in chunks.tolist():
        lo, hi = c * n, min((c + 1) * n, reader.length)
        while lowest < len(episodes) and ends[lowest] <= lo:
            lowest += 1
        try:
            rows, unreadable = reader.chunk_rows(c), None
        except UnreadableChunkError as e:
            rows, unreadable = None, e
        i = lowest
        while i < len(episodes) and starts[i] < hi:
            episode = int(episodes[i])
            if i in damaged:
                pass
            elif unreadable is not None:
                damaged[i] = Damage(episode, key, unreadable.file, unreadable.problem)
            elif summing:
                a, b = max(starts[i], lo), min(ends[i], hi)
                running[i] = rows_checksum(rows[a - lo : b - lo], running[i])
                want = _NO_CHECKSUM if expected is None else int(expected[episode])
                if b == ends[i] and want != _NO_CHECKSUM and running[i] != want:
                    files = reader.chunk_files(int(first[i]), int(last[i]))
                    damaged[i] = Damage(episode, key, files, "checksum mismatch")
            i += 1
        if on_chunk is not None:
            on_chunk()
    return list(damaged.values())
