"""Training steps per second of the image preset on a CPU: where the time of an hour's run goes.

`configs/bc_image.yaml` trains BC from two 84x84 cameras with a small conv encoder per camera.
On two cores a step of batch 64 is a few tens of milliseconds of convolutions, so two costs
that look small elsewhere decide how many steps an hour buys:

- reading the batch: random windows of a store whose images do not fit the default RAM budget
  decode an lz4 chunk per camera per sample at every step; `data.memory_gb` large enough holds
  them decoded, once;
- precision: `train.amp=bf16` runs the convolutions under bf16 autocast (the head stays in
  float32). A CPU with AMX or AVX512-BF16 runs them in hardware; elsewhere bf16 can be slower
  than float32, so the preset leaves the choice to the machine it runs on.

Each variant trains the preset through `il.train.train` on the same store, seed and batches,
and is timed over the steps after `--warmup` (the first batch, which loads the store, is not
timed), with one observation (the former preset) and two (the preset). The baseline, the first
row, is the former preset as it trained before both: float32, images decoded at every batch.

    .venv/bin/python benchmarks/train_speed.py                        # records a small store
    .venv/bin/python benchmarks/train_speed.py --data data/mt10-image.zarr --steps 400
    .venv/bin/python benchmarks/train_speed.py --markdown
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from report import cpu, print_table

import envs
from il.record import record_expert
from il.train import load_config, train

ROOT = Path(__file__).resolve().parents[1]
CAMERAS = ("image/workspace", "image/gripperPOV")
VARIANTS = {
    "1 observation, float32, images decoded per batch": ["model.obs_horizon=1", "train.amp=off",
                                                         "data.memory_gb=0"],
    "1 observation, float32, images in RAM": ["model.obs_horizon=1", "train.amp=off"],
    "1 observation, bf16, images in RAM": ["model.obs_horizon=1"],
    "2 observations, float32, images decoded per batch": ["train.amp=off", "data.memory_gb=0"],
    "2 observations, bf16, images in RAM (the preset)": [],
}  # fmt: skip


def small_store(workdir: Path, episodes_per_task: int) -> str:
    """MT10 expert episodes with the preset's cameras and proprioception."""
    path = workdir / "mt10-image.zarr"
    record_expert(
        envs.suite("metaworld/MT10"),
        str(path),
        episodes_per_task=episodes_per_task,
        workers=2,
        obs=("proprio", *CAMERAS),
        image_size=84,
        only_success=True,
    )
    return str(path)


def steps_per_second(data: str, out: Path, overrides: list[str], steps: int, warmup: int) -> float:
    """Steps per second after `warmup` steps of one short run of the preset."""
    config = load_config(
        "bc",
        ROOT / "configs" / "bc_image.yaml",
        [
            f"data.path={data}",
            f"out={out}",
            f"train.steps={steps}",
            "train.val_fraction=0",
            f"train.save_every={10 * steps}",
            "train.threads=0",
            *overrides,
        ],
    )
    stamps: dict[int, float] = {}

    def on_step(step: int, _metrics: dict[str, float]) -> None:
        if step in (warmup, steps):
            stamps[step] = time.perf_counter()

    train(config, on_step=on_step)
    return (steps - warmup) / (stamps[steps] - stamps[warmup])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="an image store with the preset's keys (default: record)")
    parser.add_argument("--episodes-per-task", type=int, default=5, help="when recording")
    parser.add_argument("--steps", type=int, default=300, help="training steps per variant")
    parser.add_argument("--warmup", type=int, default=50, help="untimed steps per variant")
    parser.add_argument("--markdown", action="store_true", help="markdown tables")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        data = args.data or small_store(workdir, args.episodes_per_task)
        rates = {
            name: steps_per_second(data, workdir / f"run{i}", extra, args.steps, args.warmup)
            for i, (name, extra) in enumerate(VARIANTS.items())
        }
    base = next(iter(rates.values()))
    rows = [[name, f"{rate:.1f}", f"{rate / base:.2f}x"] for name, rate in rates.items()]
    title = (
        f"configs/bc_image.yaml, batch 64, {args.steps - args.warmup} timed steps; "
        f"{cpu()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print_table(title, ["variant", "steps/s", "vs first row"], rows, args.markdown)


if __name__ == "__main__":
    main()
