"""Shared fixtures: a small but real DemoStore recorded by the scripted experts, and tiny
training configs for every method, so policy tests train in seconds on a CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

import envs
from il.record import record_expert
from il.train import RunConfig, load_config

ROOT = Path(__file__).resolve().parents[1]

# Per method, the overrides that make its networks tiny.
TINY_MODELS = {
    "bc": ["model.hidden=[64,64]"],
    "pc-metaworld": ["model.hidden=[32,32]", "model.head_hidden=[32]"],
    "aux-bc-metaworld": ["model.hidden=[32,32]", "model.head_hidden=[32]"],
    "diffusion": [
        "model.down_dims=[16,32]",
        "model.step_embedding=16",
        "model.groups=4",
        "model.action_horizon=4",
        "model.n_action_steps=2",
        "model.inference_steps=4",
        "model.train_steps=20",
    ],
}


@pytest.fixture(scope="session")
def store_path(tmp_path_factory) -> str:
    """Two tasks, four expert episodes each, state only: small but real."""
    path = str(tmp_path_factory.mktemp("train") / "demos.zarr")
    suite = envs.suite("metaworld/MT10")
    two = type(suite)(suite.name, suite.split, suite.tasks[:2])
    record_expert(two, path, episodes_per_task=4, workers=2)
    return path


def config_for(store_path: str, out: Path, *overrides: str, policy: str = "bc") -> RunConfig:
    return load_config(
        policy,
        None,
        [
            f"data.path={store_path}",
            f"out={out}",
            "train.steps=40",
            "train.batch_size=32",
            "train.warmup_steps=5",
            "train.log_every=10",
            "train.val_every=20",
            "train.save_every=20",
            "train.val_fraction=0.25",
            *TINY_MODELS[policy],
            *overrides,
        ],
    )
