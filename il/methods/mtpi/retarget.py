"""MT-π's keypoint retargeting network: hand keypoints as a hand has them.

A hand tracker's five points jitter from frame to frame, and a robot gripper's five points sit
in a geometry no hand has. Before either enters the policy as its conditioning, a small network
trained only on human keypoints snaps the configuration onto a hand's: its input is a human
frame's keypoints with every point but the anchor (the centre) jittered by up to `jitter_px`
pixels, its target the frame's own keypoints (METHODS §1a; a 10 → 128 → 10 MLP with tanh, as
the paper's). Frozen after training, it is applied to robot and human samples alike.

Coordinates go in and out relative to the anchor and in units of the image size, so the network
learns a shape, not where in the image the hand is.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from envs.tracks import KEYPOINTS, TRACKS_ATTR

__all__ = ["KeypointRetargeter", "human_tracks", "retarget_error", "train_retargeter"]

_N = len(KEYPOINTS)


class KeypointRetargeter(nn.Module):
    """Five keypoints (..., 5, 2) in pixels of a `size`-pixel image → the same points as a
    hand would place them."""

    def __init__(self, size: float, hidden: int = 128) -> None:
        super().__init__()
        self.size = float(size)
        self.hidden = int(hidden)
        self.net = nn.Sequential(nn.Linear(2 * _N, hidden), nn.Tanh(), nn.Linear(hidden, 2 * _N))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        anchor = points[..., :1, :]
        shape = (points - anchor) / self.size
        out = self.net(shape.flatten(-2)).unflatten(-1, (_N, 2))
        return anchor + self.size * out

    def retarget(self, points: np.ndarray) -> np.ndarray:
        """`forward` on numpy arrays, without gradients."""
        with torch.no_grad():
            return self(torch.as_tensor(np.asarray(points), dtype=torch.float32)).numpy()

    def save(self, folder: str | Path) -> Path:
        """`retargeter.pt` (weights) and `retargeter.json` (sizes) in `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), folder / "retargeter.pt")
        (folder / "retargeter.json").write_text(
            json.dumps({"size": self.size, "hidden": self.hidden})
        )
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> KeypointRetargeter:
        folder = Path(folder)
        sizes = json.loads((folder / "retargeter.json").read_text())
        model = cls(sizes["size"], sizes["hidden"])
        model.load_state_dict(torch.load(folder / "retargeter.pt", weights_only=True))
        return model.eval()


def human_tracks(store: Any) -> tuple[np.ndarray, float]:
    """Every human episode's keypoints in every camera, pooled ((N, 5, 2) pixels: each view's
    frames are samples of their own), and the image size they are in."""
    attrs = store.schema.source.get(TRACKS_ATTR)
    if not isinstance(attrs, dict) or not attrs.get("cameras"):
        raise ValueError(f"{store.path} has no motion tracks to learn a hand's keypoints from")
    cameras = attrs["cameras"]
    sizes = {max(int(c["width"]), int(c["height"])) for c in cameras.values()}
    if len(sizes) != 1:
        raise ValueError(f"{store.path}: its cameras' images differ in size ({sorted(sizes)})")
    sources = store.episode_meta()["source"]
    human = [i for i, s in enumerate(sources) if s == "human"]
    if not human:
        raise ValueError(
            f"{store.path} holds no human episodes; record some with il record --source "
            "human-proxy, or from video"
        )
    keys = [f"track/{name}" for name in cameras]
    rows = [store.read_episode(i, keys)[k] for i in human for k in keys]
    return np.concatenate(rows).astype(np.float32), float(sizes.pop())


def train_retargeter(
    tracks: np.ndarray,
    size: float,
    *,
    jitter_px: float = 8.0,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
) -> tuple[KeypointRetargeter, list[float]]:
    """Train on human keypoints `tracks` (N, 5, 2): each step, a batch with every point but the
    anchor moved by up to `jitter_px` in a uniform random direction and distance, learning to
    give the batch's own points back. Returns the network (frozen) and the loss per step."""
    if len(tracks) == 0:
        raise ValueError("no keypoints to train the retargeter on")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = KeypointRetargeter(size)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    data = torch.as_tensor(np.asarray(tracks), dtype=torch.float32)
    losses = []
    for _ in range(steps):
        index = torch.randint(len(data), (batch_size,), generator=generator)
        clean = data[index]
        noisy = clean + _jitter(len(clean), jitter_px, generator)
        loss = ((model(noisy) - clean) / size).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, losses


def _jitter(n: int, px: float, generator: torch.Generator) -> torch.Tensor:
    """(n, 5, 2) moves of up to `px` pixels, none for the anchor."""
    angle = 2 * torch.pi * torch.rand(n, _N, generator=generator)
    distance = px * torch.rand(n, _N, generator=generator)
    moves = torch.stack([distance * torch.cos(angle), distance * torch.sin(angle)], dim=-1)
    moves[:, 0] = 0.0
    return moves


def retarget_error(
    model: KeypointRetargeter,
    tracks: Sequence[np.ndarray] | np.ndarray,
    jitter_px: float,
    seed: int = 1,
) -> tuple[float, float]:
    """Mean pixel distance to the clean keypoints of jittered ones, before and after the
    network: what it takes out."""
    clean = torch.as_tensor(np.asarray(tracks), dtype=torch.float32)
    noisy = clean + _jitter(len(clean), jitter_px, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        after = model(noisy)
    before_px = (noisy - clean).norm(dim=-1)[:, 1:].mean()
    after_px = (after - clean).norm(dim=-1)[:, 1:].mean()
    return float(before_px), float(after_px)
