"""Every env family's scripted expert behind the policy interface.

Evaluating the expert through exactly the path a learned policy takes gives every results table
its reference row: if the expert's success drops, the evaluation changed, not the policy. The
expert comes from the task's family (`envs.family_of(task.family).expert`), so this module knows
no family.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import envs


class ExpertPolicy:
    """`act(observation) -> action` for one environment of a known task (a task of a suite)."""

    name = "expert"

    def __init__(self, task: Any) -> None:
        self.task = task.name
        self._expert = envs.family_of(task.family).expert(task)

    def reset(self, seed: int | None = None) -> None:
        """The experts are memoryless and deterministic; present so callers treat every policy
        alike."""

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        return self._expert.act(observation)[0]


def expert_for_task(task: Any) -> ExpertPolicy:
    """A policy factory for evaluation (picklable, module-level): the task's expert."""
    return ExpertPolicy(task)
