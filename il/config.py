"""Typed configs from a dataclass, an optional YAML and `key=value` overrides, for the verbs
whose config is one flat dataclass (`il pretrain`, `il fewshot`, `il experiment`). A mistake
in any of them is one line naming the key, raised as the caller's own error type so each verb
reports it like its other input errors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

__all__ = ["load_structured"]


def load_structured(
    cls: type,
    yaml_path: str | Path | None = None,
    overrides: Sequence[str] = (),
    error: type[Exception] = ValueError,
    example: str = "steps=1000",
) -> Any:
    """`cls` defaults, then the YAML, then the overrides; then the config's own `check()` if it
    has one (its `ValueError` becomes `error` too)."""
    for item in overrides:
        if "=" not in item:
            raise error(f"override {item!r} is not key=value (e.g. {example})")
    schema = OmegaConf.structured(cls)
    try:
        merged = schema
        if yaml_path is not None:
            merged = OmegaConf.merge(merged, OmegaConf.load(yaml_path))
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        first = str(e).splitlines()[0]
        if "not in" in first or "Could not override" in first:
            raise error(f"unknown key {key!r}; keys: {', '.join(str(k) for k in schema)}") from None
        raise error(f"bad value for {key!r}: {first}") from None
    config = OmegaConf.to_object(merged)
    check = getattr(config, "check", None)
    if check is not None:
        try:
            check()
        except ValueError as e:
            raise error(str(e)) from None
    return config
