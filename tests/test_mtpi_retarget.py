"""MT-π's keypoint retargeting network, trained on human-proxy keypoints: it takes out most
of a jitter it was never shown on frames it never saw, and survives a save and a load."""

from __future__ import annotations

import numpy as np
import pytest

from envs.human_proxy import HumanProxy
from envs.metaworld import load_suite
from il.data.store import DemoStore
from il.methods.mtpi.retarget import (
    KeypointRetargeter,
    human_tracks,
    retarget_error,
    train_retargeter,
)
from il.record import record_expert


@pytest.fixture(scope="module")
def proxy_store(tmp_path_factory) -> str:
    suite = load_suite("MT1", "train", "drawer-close-v3", 0)
    path = str(tmp_path_factory.mktemp("retarget") / "proxy.zarr")
    record_expert(suite, path, episodes_per_task=4, workers=1, human_proxy=HumanProxy())
    return path


def test_the_retargeter_takes_out_a_hand_trackers_jitter(proxy_store, tmp_path):
    tracks, size = human_tracks(DemoStore.open(proxy_store))
    assert tracks.shape[1:] == (5, 2) and size == 84
    half = len(tracks) // 2  # frames of the first episodes to learn from, the rest to test on
    model, losses = train_retargeter(tracks[:half], size, steps=800, seed=0)
    assert losses[-1] < losses[0] / 5
    before, after = retarget_error(model, tracks[half:], jitter_px=8.0)
    assert after < 0.7 * before, (before, after)
    again = KeypointRetargeter.load(model.save(tmp_path / "retargeter"))
    np.testing.assert_allclose(again.retarget(tracks[:10]), model.retarget(tracks[:10]))


def test_a_store_without_human_episodes_is_one_line(tmp_path):
    suite = load_suite("MT1", "train", "drawer-close-v3", 0)
    path = str(tmp_path / "expert.zarr")
    record_expert(suite, path, episodes_per_task=1, workers=1)
    with pytest.raises(ValueError, match="holds no human episodes"):
        human_tracks(DemoStore.open(path))
