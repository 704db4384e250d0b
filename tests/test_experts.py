"""Scripted experts: Meta-World's own actions, plus a procedure that agrees with them."""

from __future__ import annotations

import numpy as np
import pytest
from metaworld.policies import ENV_POLICY_MAP

import envs
from envs.experts import (
    PROCEDURE_ARRAYS,
    PROCEDURE_VECTOR_LAYOUT,
    Procedure,
    ScriptedExpert,
    expert_for,
)
from envs.metaworld import TASKS

STEPS = 60


def rollout(task: str, steps: int, variation: int = 0):
    """Yield (state, action, procedure) of the expert acting in `task`, plus its reference."""
    env = envs.make(f"metaworld/{task}", obs=("state",))
    expert = ScriptedExpert(task)
    reference = ENV_POLICY_MAP[task]()
    obs, _ = env.reset(options={"variation": variation})
    try:
        for _ in range(steps):
            state = obs["state"]
            before = state.copy()
            action, procedure = expert.act(state)
            # Several policies modify their parsed observation in place; ours must not leak.
            np.testing.assert_array_equal(state, before)
            yield state, action, procedure, expert, reference.get_action(state.copy())
            obs, _, _, _, info = env.step(action)
            if info["success"]:
                break
    finally:
        env.close()


@pytest.mark.parametrize("task", TASKS)
def test_expert_is_metaworld_policy_with_consistent_procedure(task):
    phases_seen = set()
    for state, action, procedure, expert, expected in rollout(task, STEPS):
        # The action is Meta-World's, bit for bit, whichever way the expert is asked.
        assert action.dtype == np.float32 and action.shape == (4,)
        assert action.tobytes() == np.asarray(expected, dtype=np.float32).tobytes()
        assert expert({"state": state}).tobytes() == action.tobytes()

        assert 0 <= procedure.phase < len(expert.phases)
        assert procedure.phase_name == expert.phases[procedure.phase] != ""
        phases_seen.add(procedure.phase)
        assert procedure.grab_effort == action[3]
        pos = procedure.positions
        assert {"hand", "object", "goal"} <= set(pos)
        assert all(v.shape == (3,) and np.all(np.isfinite(v)) for v in pos.values())
        np.testing.assert_array_equal(pos["hand"], state[:3])
        np.testing.assert_array_equal(pos["goal"], state[36:39])
        assert procedure.target.shape == (3,) and np.all(np.isfinite(procedure.target))

        # The policies steer by move(hand, target, p) = p * (target - hand), unclipped: the
        # action's xyz must point at the reported target.
        offset = procedure.target - pos["hand"]
        if np.linalg.norm(offset) > 1e-3:
            xyz = action[:3].astype(np.float64)
            cosine = xyz @ offset / (np.linalg.norm(xyz) * np.linalg.norm(offset))
            assert cosine > 0.99, (task, procedure.phase_name, cosine)
    assert phases_seen


def test_pick_place_visits_its_phases_in_order():
    sequence: list[int] = []
    names = ()
    for _, _, procedure, expert, _ in rollout("pick-place-v3", 150):
        names = expert.phases
        if not sequence or sequence[-1] != procedure.phase:
            sequence.append(procedure.phase)
    assert len(sequence) >= 3 and sequence == sorted(sequence), sequence
    assert sequence == [0, 1, 2, 3]
    assert "above the puck" in names[0] and "down" in names[1]
    assert "gripper" in names[2] and "goal" in names[3]


def test_phase_names_are_readable_and_distinct():
    for task in TASKS:
        phases = ScriptedExpert(task).phases
        assert phases and len(set(phases)) == len(phases), task
        assert all(p and p == p.strip() for p in phases), task
    # Where Meta-World's authors commented a branch, the comment names the phase.
    assert ScriptedExpert("drawer-close-v3").phases == (
        "rise up quickly",
        "move to front edge of drawer handle",
        "drop down to touch drawer handle",
        "push toward drawer handle's centroid",
    )
    # Policies without `_desired_pos` are handled too: their `move` calls are the phases.
    assert len(ScriptedExpert("drawer-open-v3").phases) == 3
    assert len(ScriptedExpert("reach-v3").phases) == 1
    # Elsewhere the branch condition does.
    assert ScriptedExpert("dial-turn-v3").phases[0].startswith("phase 0: norm(")


def test_reach_targets_the_goal():
    expert = expert_for("reach")  # the -v3 suffix may be left off
    state = np.zeros(39, dtype=np.float32)
    state[36:39] = (0.1, 0.8, 0.2)
    action, procedure = expert.act(state)
    np.testing.assert_allclose(procedure.target, state[36:39])
    assert procedure.phase == 0 and action.shape == (4,)


def test_procedure_arrays_and_vector_have_a_fixed_layout():
    expert = ScriptedExpert("stick-pull-v3")
    state = np.linspace(0, 1, 39, dtype=np.float32)
    _, procedure = expert.act(state)
    assert isinstance(procedure, Procedure) and "obj" in procedure.positions  # extra position
    arrays = procedure.as_arrays()
    assert set(arrays) == set(PROCEDURE_ARRAYS)
    for name, (shape, dtype) in PROCEDURE_ARRAYS.items():
        assert arrays[name].shape == shape and arrays[name].dtype == np.dtype(dtype), name
    vector = procedure.as_vector()
    assert vector.shape == (Procedure.VECTOR_SIZE,) and vector.dtype == np.float32
    for name, where in PROCEDURE_VECTOR_LAYOUT.items():
        np.testing.assert_array_equal(vector[where], np.ravel(arrays[name]).astype(np.float32))


def test_unknown_task_and_bad_state_are_one_line_errors():
    with pytest.raises(envs.UnknownNameError, match="did you mean 'pick-place-v3'"):
        ScriptedExpert("pick-plac-v3")
    with pytest.raises(ValueError, match=r"\(39,\)"):
        ScriptedExpert("push-v3").act(np.zeros(38))
