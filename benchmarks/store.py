"""Training windows per second from a DemoStore, against in-memory numpy and plain zarr reads.

Training draws random windows: `obs_horizon` past observations and `action_horizon` future
actions around a random step. This measures how many such windows one process (one DataLoader
worker) gets per second, with every path reading the same windows, in the same run:

- numpy in memory: every key as a numpy array in RAM, a window gathered by fancy indexing with
  the same edge padding (the ceiling: no storage at all);
- il WindowSampler: the DemoStore as `il record` writes it, read by `il.data.sampler`;
- zarr per window, per-frame chunks: a plain zarr 3 array per key with one step per chunk,
  `array[lo:hi]` per key and window, padded with `np.pad(mode="edge")` (the straightforward
  implementation);
- zarr per window, default chunks: the same reads on arrays with zarr's automatic chunking.

Data: expert episodes of MT10 recorded with `il.record` (state, two 84x84 cameras), replicated
until the store holds `--steps` steps (default 20,000, about 850 MB of decoded images per camera
pair), so that random windows do not fit in any chunk cache. Timing: `time.perf_counter` around
`--windows` windows at anchors drawn uniformly (the same anchors for every path), median of
`--repeats` repeats, interleaved across paths. Every path's windows are checked to be identical.

A second table sweeps the image chunking of the store (steps per chunk, codec) for both access
patterns, random windows and whole-episode replay, with the size on disk: the measurement behind
the store's default.

A third table prices the store's checksums on the same store: the CRC-32 taken per key when an
episode is committed, against the commit itself; and the check of every training episode before
training (`il.data.sampler.intact`), against the load training needs anyway, with images held in
RAM (checked there) and streamed from disk (checked by a pass of their own); and `il info
--verify` of the whole store.

    .venv/bin/python benchmarks/store.py
    .venv/bin/python benchmarks/store.py --steps 5000 --windows 500   # a quick look
    .venv/bin/python benchmarks/store.py --markdown                   # tables for docs/
    .venv/bin/python benchmarks/store.py --integrity-only             # the checksum table only
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr
import zarr.codecs
from report import cpu, print_table

import envs
from il.data.integrity import find_damage
from il.data.sampler import WindowSampler, window_spec
from il.data.store import DemoStore, KeySpec, StoreSchema, rows_checksum
from il.record import record_expert

CAMERAS = ("image/corner", "image/corner2")
OBS_HORIZON, ACTION_HORIZON = 2, 16


def source_store(workdir: Path, episodes_per_task: int) -> DemoStore:
    """Real expert episodes with state and two 84x84 cameras."""
    path = workdir / "source.zarr"
    record_expert(
        envs.suite("metaworld/MT10"),
        str(path),
        episodes_per_task=episodes_per_task,
        obs=("state", *CAMERAS),
        image_size=84,
        workers=2,
    )
    return DemoStore.open(path)


def keys_of(with_images: bool) -> list[str]:
    return ["obs/state", *([f"obs/{c}" for c in CAMERAS] if with_images else []), "action"]


def replicate(
    source: DemoStore, path: Path, steps: int, chunk_steps: dict[str, int | None], codec: str
) -> DemoStore:
    """A DemoStore of about `steps` steps made of copies of the source's episodes."""
    keys = keys_of(True)
    schema = StoreSchema(
        keys={
            k: KeySpec(
                source.schema.keys[k].shape,
                source.schema.keys[k].dtype,
                chunk_steps=chunk_steps.get(k),
            )
            for k in keys
        },
        fps=source.schema.fps,
    )
    store = DemoStore.create(path, schema)
    if codec != "lz4":  # re-make the image arrays with another codec, same chunks
        for k in keys[1:-1]:
            arr = store.root["data"][k]
            chunks = arr.chunks
            del store.root["data"][k]
            store.root["data"].create_array(
                k,
                shape=arr.shape,
                chunks=chunks,
                dtype=arr.dtype,
                compressors=_codec(codec),
                fill_value=0,
            )
    episodes = [source.read_episode(i, keys) for i in range(source.num_episodes)]
    i = 0
    while store.num_steps < steps:
        store.add_episode(episodes[i % len(episodes)], task="copy", seed=i)
        i += 1
    store.close()
    return DemoStore.open(path)


def _codec(name: str):
    if name == "none":
        return None
    if name == "zstd":
        return zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
    return zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


def plain_zarr(store: DemoStore, path: Path, per_frame: bool) -> dict[str, zarr.Array]:
    """Every key as a plain zarr 3 array: one step per chunk, or zarr's automatic chunks."""
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    out = {}
    for k in keys_of(True):
        data = store.array(k)[: store.num_steps]
        chunks = (1, *data.shape[1:]) if per_frame else "auto"
        out[k] = group.create_array(
            k.replace("/", "_"), shape=data.shape, dtype=data.dtype, chunks=chunks
        )
        out[k][:] = data
    return out


def window_plan(store: DemoStore, n: int, seed: int) -> list[tuple[int, int, int]]:
    """(anchor, episode start, episode end) of `n` uniformly drawn windows."""
    rng = np.random.default_rng(seed)
    anchors = rng.integers(0, store.num_steps, size=n)
    ends = store.episode_ends
    episode = np.searchsorted(ends, anchors, side="right")
    starts = store.episode_starts[episode]
    return list(zip(anchors.tolist(), starts.tolist(), ends[episode].tolist(), strict=True))


def offsets(key: str) -> tuple[int, int]:
    return (0, ACTION_HORIZON - 1) if key == "action" else (1 - OBS_HORIZON, 0)


def numpy_reader(arrays: dict[str, np.ndarray], keys: list[str]) -> Callable:
    def read(anchor: int, start: int, end: int) -> dict[str, np.ndarray]:
        out = {}
        for k in keys:
            first, last = offsets(k)
            steps = np.arange(anchor + first, anchor + last + 1)
            out[k] = arrays[k][np.clip(steps, start, end - 1)]
        return out

    return read


def zarr_reader(arrays: dict[str, zarr.Array], keys: list[str]) -> Callable:
    def read(anchor: int, start: int, end: int) -> dict[str, np.ndarray]:
        out = {}
        for k in keys:
            first, last = offsets(k)
            lo, hi = anchor + first, anchor + last + 1
            block = arrays[k][max(lo, start) : min(hi, end)]
            pad = [(max(start - lo, 0), max(hi - end, 0))] + [(0, 0)] * (block.ndim - 1)
            out[k] = np.pad(block, pad, mode="edge")
        return out

    return read


def sampler_reader(store: DemoStore, keys: list[str]) -> Callable:
    spec = window_spec([k for k in keys if k != "action"], OBS_HORIZON, ["action"], ACTION_HORIZON)
    # Small keys in RAM, images decoded from their chunks whatever the store's size.
    sampler = WindowSampler(store, spec, memory_bytes=64 * 2**20)
    sampler.readers()
    window_of = {int(a): i for i, a in enumerate(sampler._layout.anchors)}

    def read(anchor: int, start: int, end: int) -> dict[str, np.ndarray]:
        window = sampler[window_of[anchor]]
        return {k: window[k] for k in keys}

    return read


def time_paths(
    paths: dict[str, Callable],
    plan: list[tuple[int, int, int]],
    repeats: int,
    limit: dict[str, int],
) -> dict[str, float]:
    """Median windows per second of each path; `limit` caps the windows of slow paths."""
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, read in paths.items():
            windows = plan[: limit.get(name, len(plan))]
            t0 = time.perf_counter()
            for anchor, start, end in windows:
                read(anchor, start, end)
            seconds[name].append((time.perf_counter() - t0) / len(windows))
    return {name: 1.0 / statistics.median(s) for name, s in seconds.items()}


def check_same(paths: dict[str, Callable], plan: list[tuple[int, int, int]]) -> None:
    names = list(paths)
    for anchor, start, end in plan[:200]:
        reference = paths[names[0]](anchor, start, end)
        for name in names[1:]:
            got = paths[name](anchor, start, end)
            for k, v in reference.items():
                if not np.array_equal(v, got[k]):
                    raise SystemExit(f"{name} differs from {names[0]} on {k} at step {anchor}")


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20_000, help="steps in the store")
    parser.add_argument("--windows", type=int, default=2000, help="windows per timed repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--episodes-per-task", type=int, default=2, help="source recordings")
    parser.add_argument("--no-sweep", action="store_true", help="skip the chunking sweep")
    parser.add_argument(
        "--integrity-only", action="store_true", help="only the table of checksum costs"
    )
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="il-store-bench-"))
    try:
        t0 = time.perf_counter()
        source = source_store(workdir, args.episodes_per_task)
        store = replicate(source, workdir / "ours.zarr", args.steps, {}, "lz4")
        if args.integrity_only:
            print(f"{store.num_episodes} episodes, {store.num_steps} steps. Machine: {cpu()}")
            integrity(source, store, workdir, args)
            return 0
        arrays = {k: store.array(k)[: store.num_steps] for k in keys_of(True)}
        per_frame = plain_zarr(store, workdir / "per_frame.zarr", per_frame=True)
        auto = plain_zarr(store, workdir / "auto.zarr", per_frame=False)
        print(
            f"{store.num_episodes} episodes, {store.num_steps} steps; data made in "
            f"{time.perf_counter() - t0:.0f} s. Machine: {cpu()}"
        )
        plan = window_plan(store, args.windows, seed=0)
        rows = []
        for with_images in (False, True):
            keys = keys_of(with_images)
            paths = {
                "numpy in memory": numpy_reader(arrays, keys),
                "il WindowSampler": sampler_reader(store, keys),
                "zarr per window, per-frame chunks": zarr_reader(per_frame, keys),
                "zarr per window, default chunks": zarr_reader(auto, keys),
            }
            check_same(paths, plan)
            slow = {n: max(200, args.windows // 10) for n in paths if n.startswith("zarr")}
            rate = time_paths(paths, plan, args.repeats, slow)
            ours = rate["il WindowSampler"]
            what = "state + action" if not with_images else "state + 2 cameras 84x84 + action"
            for name, r in rate.items():
                rows.append(
                    [
                        what,
                        name,
                        f"{r:,.0f}",
                        f"{ours / r:.2f}x" if name != "il WindowSampler" else "",
                    ]
                )
        print_table(
            f"windows per second, one process (obs_horizon {OBS_HORIZON}, action_horizon "
            f"{ACTION_HORIZON}, {store.num_steps} steps)",
            ["keys", "reader", "windows/s", "il ÷ reader"],
            rows,
            args.markdown,
        )
        integrity(source, store, workdir, args)
        if not args.no_sweep:
            sweep(source, workdir, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def integrity(source: DemoStore, store: DemoStore, workdir: Path, args: argparse.Namespace) -> None:
    """What checksums cost: at commit, before training, and for `il info --verify`."""
    keys = keys_of(True)
    spec = window_spec(keys[:-1], OBS_HORIZON, ["action"], ACTION_HORIZON)
    episodes = [source.read_episode(i, keys) for i in range(source.num_episodes)]
    commit, summing = [], []
    load = {"images in RAM": [], "images from disk": []}
    check = {"images in RAM": [], "images from disk": []}
    verify = []
    for r in range(args.repeats):
        path = workdir / f"commit-{r}.zarr"
        with DemoStore.create(path, store.schema) as target:
            t0 = time.perf_counter()
            for i, ep in enumerate(episodes):
                target.add_episode(ep, task="copy", seed=i)
            commit.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for ep in episodes:
            for k in keys:
                rows_checksum(ep[k])
        summing.append(time.perf_counter() - t0)
        shutil.rmtree(path, ignore_errors=True)
        for name, memory in (("images in RAM", 2**40), ("images from disk", 64 * 2**20)):
            sampler = WindowSampler(store.path, spec, memory_bytes=memory)
            t0 = time.perf_counter()
            readers = sampler._load_readers()  # what the first batch loads
            load[name].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            found = find_damage(store, list(spec), sampler.episodes, readers=readers)
            check[name].append(time.perf_counter() - t0)
            assert not found
            del sampler, readers
        t0 = time.perf_counter()
        assert not find_damage(DemoStore.open(store.path))
        verify.append(time.perf_counter() - t0)
    median = statistics.median
    images = sum(store.array(f"obs/{c}").nbytes for c in CAMERAS) * store.num_steps
    images //= max(store.array(f"obs/{CAMERAS[0]}").shape[0], 1)
    rows = [
        [
            f"commit {len(episodes)} episodes (add_episode)",
            f"{median(commit) - median(summing):.2f} s",
            f"{median(commit):.2f} s",
            f"+{100 * median(summing) / (median(commit) - median(summing)):.1f}%",
        ]
    ]
    for name in load:
        before, added = median(load[name]), median(check[name])
        rows.append(
            [
                f"ready to train, {name}",
                f"{before:.2f} s",
                f"{before + added:.2f} s",
                f"+{added:.2f} s",
            ]
        )
    rows.append(
        [
            f"il info --verify ({images / 2**20:,.0f} MiB of images decoded)",
            "",
            f"{median(verify):.2f} s",
            "",
        ]
    )
    print_table(
        f"checksums (state, 2 cameras 84x84, action; {store.num_steps} steps), median of "
        f"{args.repeats}",
        ["", "without checksums", "with", "cost"],
        rows,
        args.markdown,
    )


def sweep(source: DemoStore, workdir: Path, args: argparse.Namespace) -> None:
    """Image chunking and codec: random windows, whole-episode replay and size on disk."""
    keys = keys_of(True)
    rows = []
    steps = min(args.steps, 10_000)
    for codec in ("lz4", "zstd", "none"):
        for chunk in (1, 4, 12, 32, 128):
            if codec != "lz4" and chunk not in (4, 12):
                continue
            path = workdir / f"sweep-{codec}-{chunk}.zarr"
            chunks = {f"obs/{c}": chunk for c in CAMERAS}
            store = replicate(source, path, steps, chunks, codec)
            plan = window_plan(store, args.windows, seed=1)
            rate = time_paths({"w": sampler_reader(store, keys)}, plan, args.repeats, {})["w"]
            replay = []
            for _ in range(args.repeats):
                sampler = WindowSampler(store, window_spec(keys, 1), memory_bytes=0, cache_bytes=0)
                readers = sampler.readers()
                t0 = time.perf_counter()
                for ep in store.episodes():
                    for k in keys:
                        readers[k].read(ep.start, ep.end)
                replay.append(store.num_steps / (time.perf_counter() - t0))
            images = sum(
                dir_bytes(path / "data" / "obs" / c.split("/")[0] / c.split("/")[1])
                for c in CAMERAS
            )
            rows.append(
                [
                    f"{codec}, {chunk} steps/chunk",
                    f"{rate:,.0f}",
                    f"{statistics.median(replay):,.0f}",
                    f"{images / 2**20:,.0f} MiB",
                ]
            )
            shutil.rmtree(path, ignore_errors=True)
    print_table(
        f"image chunking (2 cameras 84x84, {steps} steps): random windows and replay",
        ["image codec, chunking", "windows/s", "replay steps/s", "images on disk"],
        rows,
        args.markdown,
    )


if __name__ == "__main__":
    raise SystemExit(main())
