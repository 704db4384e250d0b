"""Typed configs from a dataclass, an optional YAML and `key=value` overrides, for the verbs
whose config is one flat dataclass (`il pretrain`, `il fewshot`, `il experiment`), and the YAML
reading every verb shares (`il train` too): a file may extend another with `base: <file>`. A
mistake in any of them is one line naming the key or the file, raised as the caller's own error
type so each verb reports it like its other input errors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

__all__ = ["load_structured", "load_yaml"]


def load_yaml(
    path: str | Path, error: type[Exception] = ValueError, _seen: tuple[Path, ...] = ()
) -> DictConfig:
    """The YAML at `path` merged onto its `base:` chain (each path relative to the file naming
    it), the root first: a variant lists only the keys it changes, so it cannot drift from the
    file it extends."""
    path = Path(path)
    resolved = path.resolve()
    if resolved in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, resolved))
        raise error(f"configs extend each other in a loop ({chain}); remove one base:")
    if not path.is_file():
        raise error(f"config {path} does not exist; check its path (base: is relative)")
    try:
        loaded = OmegaConf.load(path)
    except (OmegaConfBaseException, yaml.YAMLError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise error(f"{path} is not valid YAML: {first}") from None
    if not isinstance(loaded, DictConfig):
        raise error(f"{path} is not a mapping of config keys")
    parent = loaded.pop("base", None)
    if parent is None:
        return loaded
    root = load_yaml(path.parent / str(parent), error, (*_seen, resolved))
    merged = OmegaConf.merge(root, loaded)
    assert isinstance(merged, DictConfig)
    return merged


def load_structured(
    cls: type,
    yaml_path: str | Path | DictConfig | None = None,
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
            loaded = yaml_path if isinstance(yaml_path, DictConfig) else load_yaml(yaml_path, error)
            merged = OmegaConf.merge(merged, loaded)
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
