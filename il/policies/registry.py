"""Every method il knows, by the name that `--policy` and checkpoints use, and the rebuilding of
a policy from its checkpoint.

The table is written out rather than filled by decorators as modules happen to be imported: a
method exists exactly when it is listed here, whatever was imported before, and the method
modules need nothing from this one (they sit below it; `base` sits below them all).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file

from il.data.normalize import Normalizer
from il.policies import text
from il.policies.base import (
    CheckpointError,
    DataSpec,
    Policy,
    acting_overrides,
    build_config,
    read_description,
    resolve_checkpoint,
)
from il.policies.bc import BCPolicy
from il.policies.diffusion import DiffusionPolicy
from il.policies.id_pretraining import PretrainedBCPolicy
from il.policies.maze_bc import AugMazeBCPolicy, AuxMazeBCPolicy, MazeBCPolicy
from il.policies.procedure_cloning import PCMazePolicy
from il.policies.procedure_cloning_metaworld import AuxBCMetaWorldPolicy, PCMetaWorldPolicy

__all__ = ["METHODS", "load_policy"]

METHODS: dict[str, type[Policy]] = {
    cls.name: cls
    for cls in (
        BCPolicy,
        DiffusionPolicy,
        PretrainedBCPolicy,
        PCMazePolicy,
        MazeBCPolicy,
        AugMazeBCPolicy,
        AuxMazeBCPolicy,
        PCMetaWorldPolicy,
        AuxBCMetaWorldPolicy,
    )
}
"""Method name → policy class."""


def load_policy(
    path: str | Path, device: str | torch.device = "cpu", acting: Sequence[str] = ()
) -> Policy:
    """Rebuild a policy from a checkpoint folder (or a run folder: its latest checkpoint).

    `acting`: `model.key=value` items for the fields that change how it acts and not its
    weights (e.g. `model.n_action_steps=4`), to try a trained policy another way without
    training it again."""
    directory = resolve_checkpoint(path)
    description = read_description(directory)
    cls = METHODS.get(description.get("policy", ""))
    if cls is None:
        raise CheckpointError(
            f"{directory} holds policy {description.get('policy')!r}, which this il does not "
            f"know; known: {', '.join(sorted(METHODS))}"
        )
    values = {**description["config"], **acting_overrides(cls.Config, acting, cls.name)}
    config = build_config(cls.Config, values)
    spec = DataSpec(**description["spec"])
    normalizer = Normalizer.from_json(description["normalizer"])
    try:
        with text.from_checkpoint():  # instruction embeddings come with the weights
            policy = cls(config, spec, normalizer)
    except ValueError as e:  # a saved config is valid, so an override made it inconsistent
        if not acting:
            raise
        raise CheckpointError(f"{' '.join(acting)}: {e}") from None
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
    return policy.to(device).eval()
