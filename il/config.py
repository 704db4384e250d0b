"""Typed configs from a dataclass, an optional YAML and `key=value` overrides, for the verbs
whose config is one flat dataclass (`il pretrain`, `il fewshot`, `il experiment`), and the YAML
reading every verb shares (`il train` too): a file may extend another with `base: <file>`. A
mistake in any of them is one line naming the key or the file, raised as the caller's own error
type so each verb reports it like its other input errors.

The valid range of a number is part of its field (`field(default=..., metadata=limits(...))`),
so the range, the check and the message live in one place: `check_limits` walks any config
dataclass after it is loaded and names the first value outside its range, with the full key.
Every float must also be finite: OmegaConf reads `nan` and `inf` as floats, and either would
only surface as a traceback (or a silently broken run) many steps later."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

__all__ = [
    "Limits",
    "check_config",
    "check_limits",
    "field_limits",
    "limits",
    "load_structured",
    "load_yaml",
]


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
    if len(loaded) == 0:  # an empty file reads as {}: it would silently train the defaults
        raise error(f"config {path} is empty; give it the keys it changes, or leave it out")
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
    try:
        check_config(config)
    except ValueError as e:
        raise error(str(e)) from None
    return config


# --- ranges --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    """The valid range of a numeric field, or of every number of a list field. A bound is a
    number, or the name of another field of the same config (`at_most="action_horizon"`)."""

    at_least: float | str | None = None
    above: float | str | None = None
    at_most: float | str | None = None
    below: float | str | None = None


def limits(
    *,
    at_least: float | str | None = None,
    above: float | str | None = None,
    at_most: float | str | None = None,
    below: float | str | None = None,
) -> dict[str, Limits]:
    """Field metadata giving the field's range, e.g.
    `steps: int = field(default=1000, metadata=limits(at_least=1))`."""
    return {"limits": Limits(at_least, above, at_most, below)}


def check_config(config: Any, prefix: str = "") -> None:
    """`check_limits`, then the config's own `check()` where it has one (relations between
    fields that no range can say, such as names that must exist)."""
    check_limits(config, prefix)
    check = getattr(config, "check", None)
    if check is not None:
        check()


def check_limits(config: Any, prefix: str = "") -> None:
    """A one-line `ValueError` for the first number of `config` (a dataclass, walked into its
    nested dataclasses) that is not finite or lies outside its field's `limits`, naming the full
    key (`prefix` + field name), the value given and the valid range."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_limits(value, key + ".")
            continue
        numbers = value if isinstance(value, list | tuple) else [value]
        numbers = [v for v in numbers if isinstance(v, int | float) and not isinstance(v, bool)]
        bound = field_limits(type(config), f.name)
        if any(not _within(v, bound, config) for v in numbers):
            raise ValueError(_out_of_range(key, value, f, bound, config, prefix))


def field_limits(cls: type, name: str) -> Limits:
    """The limits of field `name` of config class `cls`, from the class that states them: a
    subclass that only changes the default (`obs_horizon: int = 2`) keeps its base's range."""
    for klass in cls.__mro__:
        found = getattr(klass, "__dataclass_fields__", {}).get(name)
        if found is not None and "limits" in found.metadata:
            return found.metadata["limits"]
    return Limits()


def _bound(value: float | str, config: Any) -> float:
    return float(getattr(config, value)) if isinstance(value, str) else value


def _within(v: float, bound: Limits, config: Any) -> bool:
    if not math.isfinite(v):
        return False
    checks = [
        (bound.at_least, lambda b: v >= b),
        (bound.above, lambda b: v > b),
        (bound.at_most, lambda b: v <= b),
        (bound.below, lambda b: v < b),
    ]
    return all(ok(_bound(b, config)) for b, ok in checks if b is not None)


def _out_of_range(
    key: str, value: Any, f: dataclasses.Field, bound: Limits, config: Any, prefix: str
) -> str:
    kind = "finite numbers" if "float" in str(f.type) else "integers"
    if isinstance(value, list | tuple):
        what = f"a list of {kind}"
    else:
        what = "a finite number" if kind == "finite numbers" else "an integer"
    parts = []
    for b, sign in (
        (bound.at_least, ">="),
        (bound.above, ">"),
        (bound.at_most, "<="),
        (bound.below, "<"),
    ):
        if isinstance(b, str):
            parts.append(f"{sign} {prefix}{b} ({getattr(config, b)})")
        elif b is not None:
            parts.append(f"{sign} {b}")
    valid = f"{what} {' and '.join(parts)}" if parts else what
    return f"{key} must be {valid}, got {value}"
