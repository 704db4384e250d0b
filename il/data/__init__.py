"""Demonstration data: the DemoStore, the window sampler and normalization.

`from il.data import DemoStore, WindowSampler, ...` works for every public name; the submodules
load on first use, so reading a store never pays for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DemoStore": "store",
    "Episode": "store",
    "KeySpec": "store",
    "StoreError": "store",
    "StoreSchema": "store",
    "WindowDataset": "sampler",
    "WindowSampler": "sampler",
    "select_episodes": "sampler",
    "split_episodes": "sampler",
    "window_spec": "sampler",
    "KeyStats": "normalize",
    "Normalizer": "normalize",
    "compute_stats": "normalize",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'il.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"il.data.{_EXPORTS[name]}"), name)
