"""The scripted Meta-World expert behind the policy interface.

Evaluating the expert through exactly the path a learned policy takes gives every results table
its reference row: if the expert's success drops, the evaluation changed, not the policy.
"""

from __future__ import annotations

import numpy as np

from envs.experts import ScriptedExpert


class ExpertPolicy:
    """`act(observation) -> action` for one environment of a known task."""

    name = "expert"

    def __init__(self, task: str) -> None:
        self.task = task
        self._expert = ScriptedExpert(task)

    def reset(self) -> None:
        """The expert is memoryless; present so callers treat every policy alike."""

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self._expert(observation), dtype=np.float32)


def expert_for_task(task: object) -> ExpertPolicy:
    """A policy factory for evaluation (picklable, module-level): the task's expert."""
    return ExpertPolicy(task.name)  # type: ignore[attr-defined]
