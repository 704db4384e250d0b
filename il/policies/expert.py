"""The scripted Meta-World experts (and the BFS maze expert) behind the policy interface.

Evaluating the expert through exactly the path a learned policy takes gives every results table
its reference row: if the expert's success drops, the evaluation changed, not the policy.
"""

from __future__ import annotations

import numpy as np

from envs.experts import ScriptedExpert
from envs.maze import BFSExpert, MazeTask


class ExpertPolicy:
    """`act(observation) -> action` for one environment of a known task."""

    name = "expert"

    def __init__(self, task: str) -> None:
        self.task = task
        self._expert = ScriptedExpert(task)

    def reset(self, seed: int | None = None) -> None:
        """The expert is memoryless and deterministic; present so callers treat every policy
        alike."""

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self._expert(observation), dtype=np.float32)


class MazeExpertPolicy:
    """The BFS expert of a maze: its action as a (1,) int64 array."""

    name = "expert"

    def __init__(self) -> None:
        self._expert = BFSExpert()

    def reset(self, seed: int | None = None) -> None:
        """The BFS expert is memoryless and deterministic."""

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        return np.array([self._expert(observation)], dtype=np.int64)


def expert_for_task(task: object) -> ExpertPolicy | MazeExpertPolicy:
    """A policy factory for evaluation (picklable, module-level): the task's expert."""
    if isinstance(task, MazeTask):
        return MazeExpertPolicy()
    return ExpertPolicy(task.name)  # type: ignore[attr-defined]
