"""A robot session built from the names a user gives (`il/rig.py`): on the simulated arm with a
scene camera, into a real store; and the one-line errors of a wrong name or checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

from il.data.store import DemoStore
from il.rig import RigError, make_rig
from il.sources import ReplaySource


def test_a_rig_runs_a_session_into_a_store_and_closes_everything(tmp_path):
    rig = make_rig("sim:metaworld/reach-v3", cameras=["corner"], image_size=32, hz=200)
    actions = np.tile([0.0, 0.0, 0.5, -1.0], (6, 1))
    out = str(tmp_path / "r.zarr")
    report = rig.run(ReplaySource([(actions, 2)]), out=out)
    assert not rig.robot.is_connected
    assert report.saved == 1 and report.steps == 6
    with DemoStore.open(out) as store:
        ep = store.read_episode(0)
        assert ep["obs/image/corner"].shape == (6, 32, 32, 3)
        assert store.episode_meta()["seed"][0] == 2 and store.schema.fps == 200
        assert np.allclose(ep["action_requested"], actions)


def test_a_wrong_robot_or_checkpoint_is_one_line(tmp_path):
    with pytest.raises(RigError, match="unknown robot"):
        make_rig("nosuch:thing")
    rig = make_rig("sim:metaworld/reach-v3")
    with pytest.raises(RigError) as error:
        rig.load_policy(tmp_path / "no-run")
    assert "\n" not in str(error.value)
    assert not rig.robot.is_connected  # nothing was connected for a checkpoint that failed
