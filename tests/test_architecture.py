"""The shape the README promises: every method is one row of a lazy table whose module holds its
policy, every experiment one row whose module holds its runner, and a new method is one package
and one row — checked by building the README's own worked example and running it through the
spine (train, checkpoint, reload, evaluate)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import config_for

from il.evaluate import evaluate_checkpoint
from il.experiments import EXPERIMENTS, load
from il.policies import registry
from il.train import train

ROOT = Path(__file__).resolve().parents[1]


def readme_block(marker: str) -> str:
    """The code block that follows `<!-- add-a-method: MARKER -->` in the README."""
    text = (ROOT / "README.md").read_text()
    found = re.search(
        rf"<!-- add-a-method: {re.escape(marker)} -->\n```python\n(.*?)```", text, re.DOTALL
    )
    assert found, f"README has no add-a-method block {marker!r}"
    return found.group(1)


@pytest.mark.parametrize("name", list(registry.METHODS))
def test_every_method_row_names_its_policy(name: str) -> None:
    cls = registry.policy_class(name)  # imports only that row's module
    assert cls.name == name
    module = cls.__module__
    assert module.startswith("il.policies.") or module.startswith("il.methods."), module
    if module.startswith("il.policies."):  # the spine holds the baselines only
        assert name in ("bc", "diffusion"), f"{name} is a paper method: give it a package"


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_every_experiment_row_lives_in_its_method_package(name: str) -> None:
    module = load(name)
    assert module.__name__.startswith("il.methods.")
    assert callable(module.run) and hasattr(module.Config, "check")


def test_the_readme_walk_through_adds_a_method_with_one_package_and_one_row(
    store_path, tmp_path, monkeypatch
) -> None:
    # the package, as the README writes it, under a name of its own so it cannot clash
    package = tmp_path / "walkthrough" / "linear"
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "policy.py").write_text(readme_block("il/methods/linear/policy.py"))
    # the row, as the README writes it, pointing at that package
    row = readme_block("row").strip().rstrip(",")
    name, target = (part.strip().strip('"') for part in row.split(":", 1))
    target = target.replace("il.methods.linear", "walkthrough.linear")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.METHODS, name, target)
    try:
        out = tmp_path / "run"
        config = config_for(store_path, out, "model.action_horizon=4", policy="bc")
        config.policy, config.model = name, registry.policy_class(name).Config(action_horizon=4)
        first_loss = None

        def on_step(step: int, metrics: dict[str, float]) -> None:
            nonlocal first_loss
            first_loss = metrics["mse"] if first_loss is None else first_loss

        train(config, on_step=on_step)
        policy = registry.load_policy(out, acting=["model.n_action_steps=2"])
        assert policy.name == "linear" and policy.n_action_steps == 2
        report = evaluate_checkpoint(out, tasks=[policy.spec.tasks[0]], episodes_per_task=1)
        assert report.tasks[0].episodes[0].length > 0
        metrics = (out / "metrics.csv").read_text().splitlines()
        last = [float(r.split(",")[-1]) for r in metrics if ",train,mse," in r][-1]
        assert np.isfinite(last) and last < first_loss  # it learnt something
    finally:
        for module in [m for m in sys.modules if m.startswith("walkthrough")]:
            del sys.modules[module]
