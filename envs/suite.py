"""What every suite of tasks shares, whatever its environment family: a named, ordered list of
tasks that builds one environment per task, picklable constructors for worker processes, and a
vector env over all of them. Evaluation and recording only ever see this interface."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import gymnasium as gym

__all__ = ["TaskSuite"]


@dataclass(frozen=True)
class TaskSuite:
    """Base of the Meta-World `Suite` and the `MazeSuite`. A family sets `build_env`, a
    module-level function `(task, suite_name, kwargs) -> env` (module-level so that the
    constructors `env_fns` returns pickle into spawned workers), and `task_not_found`."""

    name: str
    split: str
    tasks: tuple[Any, ...]
    task_seed: int = 0
    """The benchmark seed the tasks' variations were drawn with (Meta-World's; 0 for a family
    without one): another seed gives other variations of the same tasks."""

    build_env: ClassVar[Callable[[Any, str | None, dict[str, Any]], gym.Env]]

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.tasks)

    def matches(self, task: Any, name: str) -> bool:
        """Whether `name` names `task` (a family may accept short forms)."""
        return task.name == name

    def task_not_found(self, name: str) -> Exception:
        return ValueError(f"{name!r} is not a task of {self.name} ({self.split})")

    def variation_count(self, task: Any) -> int | None:
        """How many variations `task` has where episode seeds take them in turn (seed s plays
        variation s mod n, so n consecutive seeds visit each once); None where a seed draws
        its variation otherwise (a maze's random start)."""
        return None

    def task(self, name: str) -> Any:
        for t in self.tasks:
            if self.matches(t, name):
                return t
        raise self.task_not_found(name)

    def subset(self, names: Iterable[str]) -> Self:
        """The same suite restricted to some of its tasks, in the suite's order. Each task keeps
        its variations and its index, so a policy conditioned on the full suite's one-hot (and
        the episodes a store recorded) see exactly the tasks they would in the whole suite."""
        wanted = {self.task(n).name for n in names}
        if not wanted:
            raise ValueError(f"no tasks named; tasks of {self.name}: {', '.join(self.task_names)}")
        return dataclasses.replace(self, tasks=tuple(t for t in self.tasks if t.name in wanted))

    def make(self, task: str | int, **kwargs: Any) -> gym.Env:
        """One environment of the suite; keyword arguments as for the family's env."""
        chosen = self.tasks[task] if isinstance(task, int) else self.task(task)
        return type(self).build_env(chosen, self.name, kwargs)

    def env_fns(self, envs_per_task: int = 1, **kwargs: Any) -> list[Callable[[], gym.Env]]:
        """Picklable constructors, task-major: `envs_per_task` copies of each task in order."""
        return [
            functools.partial(type(self).build_env, t, self.name, dict(kwargs))
            for t in self.tasks
            for _ in range(envs_per_task)
        ]

    def make_vec(
        self, envs_per_task: int = 1, vectorization_mode: str = "sync", **kwargs: Any
    ) -> gym.vector.VectorEnv:
        """All tasks in one vector env. `async` runs each env in its own process (spawned, so
        no GL or zarr state crosses a fork)."""
        fns = self.env_fns(envs_per_task, **kwargs)
        if vectorization_mode == "sync":
            return gym.vector.SyncVectorEnv(fns)
        if vectorization_mode == "async":
            return gym.vector.AsyncVectorEnv(fns, context="spawn")
        raise ValueError(f"vectorization mode must be sync or async, not {vectorization_mode!r}")
