"""Every method il knows, by the name that `--policy` and checkpoints use, and the rebuilding of
a policy from its checkpoint.

The table is written out, one row per method, rather than filled by decorators as modules
happen to be imported: a method exists exactly when it is listed here, whatever was imported
before. A row names the module and class, and the module is imported only when that method is
asked for, so loading a BC checkpoint never imports procedure cloning (or the simulator a
method's experiment needs). The baselines live in `il.policies`; each paper method is a package
under `il.methods`. Method modules need nothing from this one (`base` sits below them all).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the table itself imports nothing heavy: `il --help` lists it without torch
    import torch

    from il.policies.base import Policy

__all__ = [
    "METHODS",
    "UnknownMethod",
    "check_acts",
    "load_policy",
    "load_weights",
    "method_names",
    "policy_class",
    "preset",
]

METHODS: dict[str, str] = {
    "bc": "il.policies.bc:BCPolicy",
    "diffusion": "il.policies.diffusion:DiffusionPolicy",
    "pc-maze": "il.methods.procedure_cloning.maze:PCMazePolicy",
    "bc-maze": "il.methods.procedure_cloning.maze_baselines:MazeBCPolicy",
    "aug-bc-maze": "il.methods.procedure_cloning.maze_baselines:AugMazeBCPolicy",
    "aux-bc-maze": "il.methods.procedure_cloning.maze_baselines:AuxMazeBCPolicy",
    "pc-metaworld": "il.methods.procedure_cloning.metaworld:PCMetaWorldPolicy",
    "aux-bc-metaworld": "il.methods.procedure_cloning.metaworld:AuxBCMetaWorldPolicy",
    "encoder-pretraining": "il.methods.id_pretraining.objectives:EncoderPretraining",
    "pretrained-bc": "il.methods.id_pretraining.policy:PretrainedBCPolicy",
    "rth": "il.methods.rth.policy:RTHPolicy",
    "rth-intervene": "il.methods.rth.intervene:RTHInterventionPolicy",
    "flat-iwr": "il.methods.rth.iwr:IWRPolicy",
}
"""Method name → `module:Class` of its policy, imported on first use."""


class UnknownMethod(KeyError):
    """A method name that is not a row of `METHODS`."""

    def __str__(self) -> str:
        return str(self.args[0])


def method_names() -> list[str]:
    return sorted(METHODS)


def policy_class(name: str) -> type[Policy]:
    """The policy class of method `name`, importing its module (and only its module)."""
    row = METHODS.get(name)
    if row is None:
        raise UnknownMethod(f"unknown policy {name!r}; choose one of: {', '.join(method_names())}")
    module, _, cls = row.partition(":")
    found = getattr(importlib.import_module(module), cls)
    if found.name != name:  # the table and the class must agree, or checkpoints would drift
        raise RuntimeError(f"METHODS[{name!r}] points at {row}, whose name is {found.name!r}")
    return found


def preset(name: str) -> Path | None:
    """The YAML preset a method ships in its own package (`Policy.preset`, beside its module),
    or None: `il train --policy NAME` starts from it when `configs/NAME.yaml` does not exist,
    so a paper method brings its settings with it and `configs/` stays what a user edits."""
    cls = policy_class(name)
    if not cls.preset:
        return None
    module = sys.modules[cls.__module__]
    return Path(str(module.__file__)).parent / cls.preset


def _checkpoint_class(directory: Path, description: dict) -> type[Policy]:
    from il.policies.base import CheckpointError

    try:
        return policy_class(str(description.get("policy", "")))
    except UnknownMethod:
        raise CheckpointError(
            f"{directory} holds policy {description.get('policy')!r}, which this il does not "
            f"know; known: {', '.join(method_names())}"
        ) from None


def check_acts(path: str | Path) -> None:
    """A one-line `CheckpointError` where the checkpoint at `path` (or a run's latest) holds a
    method that cannot act (`Policy.cannot_act`, e.g. a pretrained encoder); evaluation and
    deployment call this before they start anything."""
    from il.policies.base import CheckpointError, read_description, resolve_checkpoint

    directory = resolve_checkpoint(path)
    cls = _checkpoint_class(directory, read_description(directory))
    if cls.cannot_act:
        raise CheckpointError(f"{directory} cannot act (method {cls.name}): {cls.cannot_act}")


def load_policy(
    path: str | Path, device: str | torch.device = "cpu", acting: Sequence[str] = ()
) -> Policy:
    """Rebuild a policy from a checkpoint folder (or a run folder: its latest checkpoint).

    `acting`: `model.key=value` items for the fields that change how it acts and not its
    weights (e.g. `model.n_action_steps=4`), to try a trained policy another way without
    training it again."""
    from il.data.normalize import Normalizer
    from il.policies import text
    from il.policies.base import (
        CheckpointError,
        DataSpec,
        acting_overrides,
        build_config,
        read_description,
        resolve_checkpoint,
    )

    directory = resolve_checkpoint(path)
    description = read_description(directory)
    cls = _checkpoint_class(directory, description)
    values = {**description["config"], **acting_overrides(cls.Config, acting, cls.name)}
    config = build_config(cls.Config, values)
    if acting:  # checked only here: a checkpoint's own config was checked when it trained
        from il.config import check_limits

        try:
            check_limits(config, "model.")
        except ValueError as e:
            raise CheckpointError(str(e)) from None
    spec = DataSpec(**description["spec"])
    normalizer = Normalizer.from_json(description["normalizer"])
    try:
        with text.from_checkpoint():  # instruction embeddings come with the weights
            policy = cls(config, spec, normalizer)
    except ValueError as e:  # a saved config is valid, so an override made it inconsistent
        if not acting:
            raise
        raise CheckpointError(f"{' '.join(acting)}: {e}") from None
    load_weights(policy, directory)
    return policy.to(device).eval()


def load_weights(policy: Policy, directory: Path) -> None:
    """The weights of the checkpoint `directory` into `policy`, which must have been built with
    its config and spec (a `CheckpointError` in one line where they do not fit)."""
    from safetensors.torch import load_file

    from il.policies.base import CheckpointError

    try:
        state = load_file(str(directory / "model.safetensors"))
    except Exception as e:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"{directory}/model.safetensors cannot be read: {e}") from None
    missing, unexpected = policy.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{directory}: weights do not fit the policy (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); the checkpoint and policy.json disagree"
        )
