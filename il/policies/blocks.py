"""Network blocks the methods share: MLPs, the image encoders, task conditioning, the observation
encoder that joins them.

The observation encoder turns a window of normalized observations (`b t ...`) and a task index
into one feature vector per sample: vector keys are flattened over time, every camera goes
through an image encoder (shared weights across time, one encoder per camera), and the task
enters as a one-hot or as the sentence embedding of its instruction. Methods put their heads on
top of it.

Two image encoders: a small conv net with a spatial-softmax head, quick on a CPU, and ResNet-18
(randomly initialised; no weights are downloaded) with GroupNorm in place of BatchNorm, as
Diffusion Policy uses it, since batch statistics of a few correlated frames are a poor
normaliser. Its modules carry torchvision's names, so torchvision's weights load into it where a
user has them; it is written here because torchvision has no CPU-only build to depend on.
A third, `conv4`, is the encoder of inverse-dynamics pretraining (`il.methods.id_pretraining`):
bounded LayerNorm + tanh features and random-crop augmentation, for encoders that are pretrained
once and then frozen under any policy's head.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from il.config import limits
from il.policies import text

__all__ = [
    "MLP",
    "ConvKeypointEncoder",
    "ObservationConfig",
    "ObservationEncoder",
    "ResNet18",
    "SpatialSoftmax",
    "SpatialSoftmaxCNN",
    "TaskConditioning",
]

TASK_ENCODINGS = ("onehot", "text")


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
    """A small conv net with a spatial-softmax head, for 64–128 px images on CPU or GPU: two
    blocks of two 3×3 convs, the first of each with stride 2, `channels` wide."""

    def __init__(
        self, out_dim: int = 64, channels: Sequence[int] = (32, 64), keypoints: int = 32
    ) -> None:
        super().__init__()
        if len(channels) != 2 or min(channels) < 8 or any(c % 8 for c in channels):
            raise ValueError(
                f"the cnn image encoder takes 2 widths, multiples of 8, not {list(channels)}"
            )
        c1, c2 = channels
        self.convs = nn.Sequential(
            nn.Conv2d(3, c1, 3, stride=2, padding=1),
            nn.GroupNorm(8, c1),
            nn.Mish(),
            nn.Conv2d(c1, c1, 3, padding=1),
            nn.GroupNorm(8, c1),
            nn.Mish(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),
            nn.GroupNorm(8, c2),
            nn.Mish(),
            nn.Conv2d(c2, c2, 3, padding=1),
            nn.GroupNorm(8, c2),
            nn.Mish(),
        )
        self.keypoints = SpatialSoftmax(c2, keypoints)
        self.out = nn.Linear(keypoints * 2, out_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 `b h w c` → `b out_dim`."""
        x = rearrange(images, "b h w c -> b c h w").float() / 127.5 - 1.0
        return self.out(self.keypoints(self.convs(x)))


def random_crop(images: torch.Tensor, pad: int) -> torch.Tensor:
    """DrQ-style shift augmentation: pad by `pad` pixels (edge replicated) and crop back to the
    original size at a random offset per image. Float `b c h w` in and out."""
    if pad <= 0:
        return images
    b, _c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    # One grid_sample instead of a Python loop over the batch.
    shift = torch.randint(0, 2 * pad + 1, (b, 1, 1, 2), device=images.device).to(images.dtype)
    ys = torch.arange(h, device=images.device, dtype=images.dtype)
    xs = torch.arange(w, device=images.device, dtype=images.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    base = torch.stack([grid_x, grid_y], dim=-1)[None] + shift  # b h w 2, padded pixels
    size = torch.tensor([w + 2 * pad, h + 2 * pad], device=images.device, dtype=images.dtype)
    grid = (2 * base + 1) / size - 1  # pixel centres → [-1, 1]
    return F.grid_sample(padded, grid, mode="nearest", align_corners=False)


class ConvKeypointEncoder(nn.Module):
    """The image encoder of inverse-dynamics pretraining (Brandfonbrener et al. 2023): four 3×3
    convs (GELU, no normalisation) → spatial softmax → Linear → LayerNorm → tanh.

    The bounded, normalised output keeps pretraining objectives from shrinking or inflating the
    features to game their loss, so a frozen encoder hands a fine-tuned head features of a known
    range. Random-crop augmentation is applied in training mode only; `crop_pad=0` turns it off
    (explicit forward dynamics reconstructs pixels, where a shifted input would be noise)."""

    def __init__(
        self,
        out_dim: int = 64,
        channels: Sequence[int] = (32, 64, 128, 256),
        strides: Sequence[int] = (2, 2, 1, 1),
        keypoints: int | None = None,
        crop_pad: int = 4,
    ) -> None:
        super().__init__()
        if len(channels) != len(strides) or not channels:
            raise ValueError(
                f"encoder channels {list(channels)} and strides {list(strides)} must be "
                "non-empty lists of the same length"
            )
        layers: list[nn.Module] = []
        for cin, cout, stride in zip([3, *channels[:-1]], channels, strides, strict=True):
            layers += [nn.Conv2d(cin, cout, 3, stride, padding=1), nn.GELU()]
        # Channels-last is the layout oneDNN's convolutions run fastest in on a CPU (about 12%
        # here) and the layout the camera's h w c bytes arrive in.
        self.convs = nn.Sequential(*layers).to(memory_format=torch.channels_last)
        for layer in self.convs:
            if isinstance(layer, nn.Conv2d):
                # He init keeps the activations' spread through the GELU stack; torch's default
                # shrinks it layer by layer until every image yields the same keypoints, and the
                # InfoNCE objectives then start with no signal to learn from.
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)
        self.keypoints = SpatialSoftmax(channels[-1], keypoints or channels[-1])
        self.out = nn.Sequential(
            nn.Linear(2 * (keypoints or channels[-1]), out_dim), nn.LayerNorm(out_dim), nn.Tanh()
        )
        self.out_dim = out_dim
        self.crop_pad = crop_pad

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 `b h w c` → `b out_dim` in (-1, 1)."""
        x = rearrange(images, "b h w c -> b c h w").float() / 127.5 - 1.0
        if self.training:
            x = random_crop(x, self.crop_pad)
        x = x.contiguous(memory_format=torch.channels_last)
        return self.out(self.keypoints(self.convs(x)))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.GroupNorm(cout // groups, cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.GroupNorm(cout // groups, cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(cout // groups, cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """ResNet-18's trunk (He et al. 2016) with GroupNorm (16 channels a group) and a
    spatial-softmax head instead of global pooling."""

    def __init__(self, out_dim: int = 64, keypoints: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.GroupNorm(4, 64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = [64, 128, 256, 512]
        for i, (cin, cout) in enumerate(itertools.pairwise([64, *widths]), start=1):
            stride = 1 if i == 1 else 2
            blocks = [_BasicBlock(cin, cout, stride, 16), _BasicBlock(cout, cout, 1, 16)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
        self.keypoints = SpatialSoftmax(512, keypoints)
        self.out = nn.Linear(keypoints * 2, out_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 `b h w c` → `b out_dim`."""
        x = rearrange(images, "b h w c -> b c h w").float() / 127.5 - 1.0
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.out(self.keypoints(x))


def _resnet18(out_dim: int, channels: Sequence[int] | None) -> nn.Module:
    if channels is not None:
        raise ValueError("resnet18 has torchvision's widths; leave model.image_channels unset")
    return ResNet18(out_dim)


IMAGE_ENCODERS: dict[str, Callable[[int, Sequence[int] | None], nn.Module]] = {
    "cnn": lambda out_dim, channels: SpatialSoftmaxCNN(out_dim, channels or (32, 64)),
    "resnet18": _resnet18,
    "conv4": lambda out_dim, channels: ConvKeypointEncoder(out_dim, channels or (32, 64, 128, 256)),
}
"""`model.image_encoder` → how to build it from the features per camera and the conv widths
(`model.image_channels`, None for the encoder's own)."""


class TaskConditioning(nn.Module):
    """Task index → a one-hot, or the sentence embedding of the task's instruction (a buffer:
    computed once when the policy is built for training, then saved with the weights)."""

    def __init__(
        self, n_tasks: int, encoding: str = "onehot", instructions: Sequence[str] = ()
    ) -> None:
        super().__init__()
        if encoding not in TASK_ENCODINGS:
            raise ValueError(
                f"unknown task encoding {encoding!r}; choose one of {', '.join(TASK_ENCODINGS)}"
            )
        self.n_tasks, self.encoding = n_tasks, encoding
        self.out_dim = 0
        if n_tasks > 1 and encoding == "onehot":
            self.out_dim = n_tasks
        elif n_tasks > 1:
            if len(instructions) != n_tasks:
                raise ValueError(
                    f"text task encoding needs one instruction per task: {n_tasks} tasks, "
                    f"{len(instructions)} instructions"
                )
            self.register_buffer("embeddings", torch.from_numpy(text.embed(instructions)))
            self.out_dim = text.EMBEDDING_DIM

    def forward(self, task: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        if self.out_dim == 0:
            return None
        if self.encoding == "onehot":
            return F.one_hot(task, self.n_tasks).to(dtype)
        return self.embeddings[task].to(dtype)


@dataclass
class ObservationConfig:
    """What every method's observation encoder takes; method configs extend it."""

    obs_horizon: int = field(default=1, metadata=limits(at_least=1))
    """Past observations the policy sees (1 = the current one)."""
    image_encoder: str = "cnn"
    """Per camera: cnn (small conv net with spatial softmax), resnet18, or conv4 (the
    inverse-dynamics-pretraining encoder: LayerNorm + tanh output, random-crop augmentation)."""
    image_features: int = field(default=64, metadata=limits(at_least=1))
    """Features per camera from the image encoder."""
    image_channels: list[int] | None = field(default=None, metadata=limits(at_least=1))
    """Conv widths of the image encoder, first layer to last: cnn takes 2 (default 32, 64),
    conv4 takes 4 (default the paper's 32, 64, 128, 256); resnet18 keeps its own."""
    task_encoding: str = "onehot"
    """How a multi-task policy is told its task: onehot, or text (sentence embedding of the
    instruction; needs the `text` extra when training)."""
    obs_noise: float = field(default=0.0, metadata=limits(at_least=0))
    """Std of Gaussian noise added to normalized vector observations in training: makes the
    policy recover from states slightly off the demonstrations."""
    image_shift: int = field(default=0, metadata=limits(at_least=0))
    """Random shift of camera images in training, in pixels (edges replicated; DrQ): the
    cheapest image augmentation that keeps a small policy from memorising pixel positions."""


class ObservationEncoder(nn.Module):
    """Window of observations + task → one feature vector."""

    @classmethod
    def from_config(
        cls,
        config: ObservationConfig,
        obs_shapes: Mapping[str, Sequence[int]],
        tasks: Sequence[str],
        instructions: Sequence[str],
    ) -> ObservationEncoder:
        return cls(
            obs_shapes,
            config.obs_horizon,
            len(tasks),
            config.image_features,
            image_encoder_kind=config.image_encoder,
            image_channels=config.image_channels,
            task_encoding=config.task_encoding,
            instructions=instructions,
            image_shift=config.image_shift,
        )

    def __init__(
        self,
        obs_shapes: Mapping[str, Sequence[int]],
        obs_horizon: int,
        n_tasks: int,
        image_features: int = 64,
        *,
        image_encoder_kind: str = "cnn",
        image_channels: Sequence[int] | None = None,
        task_encoding: str = "onehot",
        instructions: Sequence[str] = (),
        image_shift: int = 0,
    ) -> None:
        super().__init__()
        if image_shift < 0:
            raise ValueError(f"model.image_shift must be 0 or more pixels, not {image_shift}")
        self.image_shift = image_shift
        if image_encoder_kind not in IMAGE_ENCODERS:  # checked even without cameras: a typo
            raise ValueError(
                f"unknown image encoder {image_encoder_kind!r}; choose one of "
                f"{', '.join(IMAGE_ENCODERS)}"
            )
        self.vector_keys = [k for k, s in obs_shapes.items() if len(s) == 1]
        self.image_keys = [k for k, s in obs_shapes.items() if len(s) == 3]
        build = IMAGE_ENCODERS[image_encoder_kind]
        self.cameras = nn.ModuleDict(
            {k.replace("/", "__"): build(image_features, image_channels) for k in self.image_keys}
        )
        self.task = TaskConditioning(n_tasks, task_encoding, instructions)
        vector_dim = sum(int(obs_shapes[k][0]) for k in self.vector_keys)
        self.out_dim = (
            obs_horizon * (vector_dim + image_features * len(self.image_keys)) + self.task.out_dim
        )

    def forward(self, obs: Mapping[str, torch.Tensor], task: torch.Tensor) -> torch.Tensor:
        parts = [rearrange(obs[k], "b t d -> b (t d)") for k in self.vector_keys]
        for key in self.image_keys:
            images = obs[key]  # b t h w c
            b, t = images.shape[:2]
            if self.training and self.image_shift > 0:
                # one shift per window, the same for its frames; float 0-255 goes on to the encoder
                stacked = rearrange(images.float(), "b t h w c -> b (t c) h w")
                stacked = random_crop(stacked, self.image_shift)
                images = rearrange(stacked, "b (t c) h w -> b t h w c", t=t)
            images = rearrange(images, "b t h w c -> (b t) h w c")
            features = self.cameras[key.replace("/", "__")](images)
            parts.append(rearrange(features, "(b t) d -> b (t d)", b=b))
        conditioning = self.task(task, parts[0].dtype)
        if conditioning is not None:
            parts.append(conditioning)
        return torch.cat(parts, dim=-1)
