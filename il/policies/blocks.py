"""Network blocks the methods share: MLPs, the image encoder, task conditioning, the observation
encoder that joins them.

The observation encoder turns a window of normalized observations (`b t ...`) and a task index
into one feature vector per sample: vector keys are flattened over time, every camera goes
through an image encoder (shared weights across time, one encoder per camera), and the task
enters as a one-hot. Methods put their heads on top of it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

__all__ = ["MLP", "ObservationEncoder", "SpatialSoftmax", "SpatialSoftmaxCNN"]


class MLP(nn.Sequential):
    """Linear layers with an activation between them (none after the last)."""

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        out_dim: int,
        *,
        dropout: float = 0.0,
        layer_norm: bool = False,
    ) -> None:
        layers: list[nn.Module] = []
        dims = [in_dim, *hidden]
        for a, b in itertools.pairwise(dims):
            layers.append(nn.Linear(a, b))
            if layer_norm:
                layers.append(nn.LayerNorm(b))
            layers.append(nn.Mish())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(dims[-1], out_dim))
        super().__init__(*layers)


class SpatialSoftmax(nn.Module):
    """Per feature map, the expected image coordinates of its softmax: keypoints (x, y) that say
    *where* something is, which is what a policy needs of a small object or a goal marker."""

    def __init__(self, channels: int, keypoints: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(channels, keypoints, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        maps = self.project(features)  # b k h w
        _b, _k, h, w = maps.shape
        attention = F.softmax(rearrange(maps, "b k h w -> b k (h w)"), dim=-1)
        ys = torch.linspace(-1, 1, h, device=maps.device, dtype=attention.dtype)
        xs = torch.linspace(-1, 1, w, device=maps.device, dtype=attention.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        x = attention @ grid_x.reshape(-1)
        y = attention @ grid_y.reshape(-1)
        return rearrange(torch.stack([x, y], dim=-1), "b k two -> b (k two)")


class SpatialSoftmaxCNN(nn.Module):
    """A small conv net with a spatial-softmax head, for 64–128 px images on CPU or GPU."""

    def __init__(self, out_dim: int = 64, channels: int = 32, keypoints: int = 32) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(3, channels, 3, stride=2, padding=1),
            nn.GroupNorm(8, channels),
            nn.Mish(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(8, channels),
            nn.Mish(),
            nn.Conv2d(channels, channels * 2, 3, stride=2, padding=1),
            nn.GroupNorm(8, channels * 2),
            nn.Mish(),
            nn.Conv2d(channels * 2, channels * 2, 3, padding=1),
            nn.GroupNorm(8, channels * 2),
            nn.Mish(),
        )
        self.keypoints = SpatialSoftmax(channels * 2, keypoints)
        self.out = nn.Linear(keypoints * 2, out_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 `b h w c` → `b out_dim`."""
        x = rearrange(images, "b h w c -> b c h w").float() / 127.5 - 1.0
        return self.out(self.keypoints(self.convs(x)))


class ObservationEncoder(nn.Module):
    """Window of observations + task → one feature vector."""

    def __init__(
        self,
        obs_shapes: Mapping[str, Sequence[int]],
        obs_horizon: int,
        n_tasks: int,
        image_features: int = 64,
    ) -> None:
        super().__init__()
        self.vector_keys = [k for k, s in obs_shapes.items() if len(s) == 1]
        self.image_keys = [k for k, s in obs_shapes.items() if len(s) == 3]
        self.n_tasks = n_tasks
        self.cameras = nn.ModuleDict(
            {k.replace("/", "__"): SpatialSoftmaxCNN(image_features) for k in self.image_keys}
        )
        vector_dim = sum(int(obs_shapes[k][0]) for k in self.vector_keys)
        self.out_dim = obs_horizon * (vector_dim + image_features * len(self.image_keys)) + (
            n_tasks if n_tasks > 1 else 0
        )

    def forward(self, obs: Mapping[str, torch.Tensor], task: torch.Tensor) -> torch.Tensor:
        parts = [rearrange(obs[k], "b t d -> b (t d)") for k in self.vector_keys]
        for key in self.image_keys:
            images = obs[key]
            b = images.shape[0]
            features = self.cameras[key.replace("/", "__")](
                rearrange(images, "b t h w c -> (b t) h w c")
            )
            parts.append(rearrange(features, "(b t) d -> b (t d)", b=b))
        if self.n_tasks > 1:
            parts.append(F.one_hot(task, self.n_tasks).to(parts[0].dtype))
        return torch.cat(parts, dim=-1)
