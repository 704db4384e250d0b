"""What an action vector means: the one action convention shared by environments, robot drivers,
DemoStores and policy checkpoints.

An action is only numbers; whether `[0.3, 0, 0, 1]` moves a hand 3 mm to the right and closes a
gripper, or sets a joint to 0.3 rad, is a convention. Every receiver of actions states its own:
a driver as an `ActionSpec` (`Robot.action_spec`), an env family as the same spec in its JSON
form (`envs` stays free of `robots`, so it writes the form, not the class). Every recorder writes
it into the store, and training copies it into the checkpoint. Wherever a checkpoint meets an
env or a robot (evaluation, deployment, replay) `check_actions` compares the two, so a policy
trained on one convention is refused, in one line naming both, before a single command is sent.

This module imports nothing but numpy, so drivers, stores and checkpoints use it without a
simulator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["KINDS", "ActionMismatch", "ActionSpec", "check_actions"]

KINDS = ("ee_delta", "ee_absolute", "joint_delta", "joint_absolute", "discrete")
"""End-effector displacement per step or target pose; joint displacement per step or target
position; one of a few discrete choices. A gripper, if any, is the last dimension."""


class ActionMismatch(ValueError):
    """Actions of one convention offered where another is expected; the message names both."""


@dataclass(frozen=True)
class ActionSpec:
    """An action convention: what each number of an action means, and the bounds a receiver
    accepts (the safety filter clips commands to them).

    `names` and `units` give one entry per dimension; a discrete spec names its choices instead
    (its action is one index, `dim == 1`) and has no units or bounds. `frame` is where the
    motion is expressed (world, base, joint, grid). `gripper` says what the gripper dimension
    means (e.g. "+1 closes, -1 opens"); `note` is free text for people. An empty `frame`,
    `units` or `gripper` means "not stated" and is not compared."""

    kind: str
    names: tuple[str, ...]
    units: tuple[str, ...] = ()
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    frame: str = "base"
    gripper: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"action kind {self.kind!r} is not one of {', '.join(KINDS)}")
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "units", tuple(str(u) for u in self.units))
        n = len(self.names)
        if self.kind == "discrete":
            if n < 2 or self.units or self.low is not None or self.high is not None:
                raise ValueError("a discrete action spec names its choices and has no units/bounds")
            return
        low = np.full(n, -np.inf) if self.low is None else self.low
        high = np.full(n, np.inf) if self.high is None else self.high
        low = np.asarray(low, dtype=np.float64).reshape(-1)
        high = np.asarray(high, dtype=np.float64).reshape(-1)
        if (self.units and len(self.units) != n) or low.shape != (n,) or high.shape != (n,):
            raise ValueError(
                f"action spec: {n} names but {len(self.units)} units, bounds {low.shape}"
            )
        if np.any(low > high):
            raise ValueError("action spec: a lower bound exceeds its upper bound")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    @property
    def dim(self) -> int:
        """Numbers per action: one index for a discrete spec, else one per name."""
        return 1 if self.kind == "discrete" else len(self.names)

    @property
    def discrete(self) -> bool:
        return self.kind == "discrete"

    def describe(self) -> str:
        """One line a person can compare: kind, dimensions with units, frame, gripper."""
        if self.discrete:
            return f"discrete ({', '.join(self.names)})"
        dims = ", ".join(
            f"{n} [{u}]" if u else n
            for n, u in zip(self.names, self.units or ("",) * len(self.names), strict=True)
        )
        parts = [f"{self.kind} ({dims})"]
        if self.frame:
            parts.append(f"{self.frame} frame")
        if self.gripper:
            parts.append(f"gripper {self.gripper}")
        return ", ".join(parts)

    def mismatch(self, other: ActionSpec) -> str | None:
        """What makes `other`'s actions mean something else than this spec's, or None."""
        if self.kind != other.kind:
            return "kind"
        if self.dim != other.dim:
            return "number of dimensions"
        if self.names != other.names:
            return "choices" if self.discrete else "dimension names"
        if self.discrete:
            return None
        if self.units and other.units and self.units != other.units:
            return "units"
        if self.frame and other.frame and self.frame != other.frame:
            return "frame"
        if self.gripper and other.gripper and self.gripper != other.gripper:
            return "gripper"
        return None

    def to_json(self) -> dict[str, Any]:
        # "type", not "kind": the key every store and checkpoint has used for it
        data: dict[str, Any] = {"type": self.kind, "names": list(self.names)}
        if not self.discrete:
            assert self.low is not None and self.high is not None
            data |= {
                "units": list(self.units),
                "low": self.low.tolist(),
                "high": self.high.tolist(),
            }
        return data | {"frame": self.frame, "gripper": self.gripper, "note": self.note}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> ActionSpec | None:
        """The spec stored in a DemoStore or checkpoint; None where none was stated. Reads the
        forms older stores wrote too (`type: delta` with `dims`, `type: discrete` with `n`)."""
        if not data:
            return None
        kind = str(data.get("type", ""))
        if kind == "discrete":
            return cls(
                "discrete",
                tuple(data["names"]),
                frame=str(data.get("frame", "grid")),
                note=_text(data.get("note", data.get("units", ""))),
            )
        if kind == "delta":  # Meta-World stores before the typed convention
            names = {"dx": "x", "dy": "y", "dz": "z", "grab": "gripper"}
            dims = tuple(names.get(d, d) for d in data["dims"])
            return cls(
                "ee_delta",
                dims,
                tuple("1" if d == "gripper" else "cm" for d in dims),
                -np.ones(len(dims)),
                np.ones(len(dims)),
                frame=str(data.get("frame", "world")),
                gripper="+1 closes, -1 opens" if "gripper" in dims else "",
                note=_text(data.get("units", "")),
            )
        units = data.get("units", ())
        return cls(
            kind,
            tuple(data["names"]),
            tuple(units) if isinstance(units, Sequence) and not isinstance(units, str) else (),
            None if data.get("low") is None else np.asarray(data["low"], dtype=np.float64),
            None if data.get("high") is None else np.asarray(data["high"], dtype=np.float64),
            frame=str(data.get("frame", "")),
            gripper=str(data.get("gripper", "")),
            note=_text(data.get("note", "")),
        )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def check_actions(
    produced: ActionSpec | Mapping[str, Any] | None,
    accepted: ActionSpec | Mapping[str, Any] | None,
    producer: str,
    receiver: str,
    *,
    produced_dim: int | None = None,
    fix: str = "use one made for it",
) -> None:
    """Refuse, in one line that names both conventions, actions `producer` emits (a checkpoint,
    a recording) that `receiver` (an env, a robot) would read as something else; `fix` ends
    the line with what to do instead.

    Where the producer states no convention (a store from before conventions were recorded),
    only its width can be compared: `produced_dim`."""
    have = produced if isinstance(produced, ActionSpec) else ActionSpec.from_json(produced)
    want = accepted if isinstance(accepted, ActionSpec) else ActionSpec.from_json(accepted)
    if want is None:
        return
    if have is None:
        if produced_dim is not None and produced_dim != want.dim:
            raise ActionMismatch(
                f"{producer} emits actions of {produced_dim} numbers but {receiver} takes "
                f"{want.dim}, {want.describe()}; {fix}"
            )
        return
    what = have.mismatch(want)
    if what is not None:
        raise ActionMismatch(
            f"{producer} emits {have.describe()} but {receiver} takes {want.describe()} "
            f"(different {what}); {fix}"
        )
