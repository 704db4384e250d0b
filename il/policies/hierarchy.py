"""The hook through which a hierarchical policy's intermediate output is read and overridden.

Hierarchical methods predict something between the observation and the action and act on it:
a procedure (procedure cloning), a language motion (RT-H), and later a motion track, which the
README lists as not here yet. A person
or a program watching a rollout can read that intermediate output after every `act()` and
replace it before the action is read off: a language correction, an edited track, a procedure
computed by a planner. Every such method mixes in `IntermediateOutput` and calls
`resolve_intermediate(predicted)` between its two stages, so callers use one interface whatever
the method:

    policy.act(obs)
    policy.intermediate            # what the action was read from
    policy.override_intermediate(lambda predicted: fix(predicted), steps=5)
    policy.act(obs)                # acts on fix(predicted) for the next 5 calls
    policy.predicted_intermediate  # what the policy itself predicted

An override is a value (used as is) or a function of the predicted value; it applies to the next
`steps` calls of `act()` (None: until `clear_override()`). `reset()` between episodes keeps it:
the caller set it, the caller clears it. Each method documents its intermediate's type under
`intermediate_name`, and says it in a few words with `intermediate_text()`, which rollout videos
draw onto every frame (an overridden one marked as a correction).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

__all__ = ["IntermediateOutput"]


class IntermediateOutput:
    """Mixin for policies with an intermediate output a caller may read and override."""

    intermediate_name: ClassVar[str] = "intermediate"
    """What the intermediate output is, e.g. `procedure` or `language_motion`."""

    _intermediate: Any = None
    _predicted_intermediate: Any = None
    _override: Any = None
    _override_steps: int | None = None
    _has_override: bool = False
    _acted_on_override: bool = False

    @property
    def intermediate(self) -> Any:
        """The intermediate output the last action was read from (after any override)."""
        return self._intermediate

    @property
    def predicted_intermediate(self) -> Any:
        """The policy's own prediction at the last action (before any override)."""
        return self._predicted_intermediate

    @property
    def overridden(self) -> bool:
        """Whether an override is set for the next action."""
        return self._has_override

    @property
    def intermediate_overridden(self) -> bool:
        """Whether the last action was read from an override rather than the prediction."""
        return self._acted_on_override

    def intermediate_text(self) -> str:
        """The last intermediate output in a few words, for a person watching (a video caption);
        methods whose intermediate is not already short text say it their own way."""
        return str(self._intermediate)

    def override_intermediate(
        self, override: Callable[[Any], Any] | Any, *, steps: int | None = 1
    ) -> None:
        """Act on `override` instead of the prediction for the next `steps` calls of `act()`
        (None: until `clear_override()`). A callable gets the prediction and returns the value to
        act on; anything else is used as is."""
        if steps is not None and steps < 1:
            raise ValueError(
                f"an override lasts at least one step (or None: until cleared), not {steps}"
            )
        self._override, self._override_steps, self._has_override = override, steps, True

    def clear_override(self) -> None:
        """Act on the policy's own predictions again."""
        self._override, self._override_steps, self._has_override = None, None, False

    def resolve_intermediate(self, predicted: Any) -> Any:
        """Record `predicted`, apply the override if one is set, record and return the value the
        action is to be read from. Methods call this once per action."""
        self._predicted_intermediate = predicted
        value = predicted
        self._acted_on_override = self._has_override
        if self._has_override:
            override = self._override
            value = override(predicted) if callable(override) else override
            if self._override_steps is not None:
                self._override_steps -= 1
                if self._override_steps == 0:
                    self.clear_override()
        self._intermediate = value
        return value

    def forget_intermediate(self) -> None:
        """Drop the last intermediate output (a new episode has none yet); overrides stay."""
        self._intermediate = self._predicted_intermediate = None
        self._acted_on_override = False
