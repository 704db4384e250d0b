"""Diffusion Policy (Chi et al., RSS 2023): an action chunk is sampled by denoising.

Instead of regressing one action, the policy learns to remove noise from a whole chunk of
`action_horizon` future actions, conditioned on the last `obs_horizon` observations and the task.
A regression head averages the modes of multimodal demonstrations (go left or right of the
obstacle → straight into it); denoising from random noise commits to one of them, and
predicting a chunk keeps consecutive actions consistent.

The denoiser is the paper's 1-D temporal U-Net: residual conv blocks over the time axis, FiLM
conditioning on the observation features and the diffusion step at every block. An optional MLP
trunk (`cond_hidden`) turns the features into that condition first: on MT50 it is what lifts the
grasps and insertions to the experts' level. Training is DDPM's (predict the added noise, or
the clean chunk, at a random step of a squared-cosine schedule); acting samples with DDIM in a
few steps (10 by default), which is what makes the policy fast enough for a 30 Hz loop on a CPU.
`n_action_steps` of each chunk are executed before sampling again.

The head itself (`DenoiserConfig`, the U-Net, `denoising_loss`, `sample_chunk`) is what any
method conditions on its own features when it wants its actions denoised rather than regressed,
as RT-H's action head does on the observation and a language motion.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from il.config import limits
from il.data.normalize import Normalizer
from il.policies.base import DataSpec, Policy
from il.policies.blocks import MLP, ObservationConfig, ObservationEncoder

__all__ = [
    "ConditionalUnet1D",
    "DenoiserConfig",
    "DiffusionConfig",
    "DiffusionPolicy",
    "NoiseSchedule",
    "check_denoiser",
    "condition_trunk",
    "denoiser",
    "denoising_loss",
    "sample_chunk",
]


@dataclass
class DenoiserConfig:
    """The denoising action head: a 1-D conditional U-Net and its noise schedule. Every method
    that samples its actions by denoising (Diffusion Policy, RT-H's action head) takes these
    fields, so they mean the same thing, with the same ranges, wherever they appear."""

    ACTING: ClassVar[tuple[str, ...]] = ("inference_steps", "eta", "clip_sample", "noise_scale")
    """Fields that change how the trained head samples, not its weights."""

    down_dims: list[int] = field(
        default_factory=lambda: [128, 256, 512], metadata=limits(at_least=1)
    )
    """Channels of the U-Net's levels; each level after the first halves the time axis."""
    kernel_size: int = field(default=5, metadata=limits(at_least=1))
    groups: int = field(default=8, metadata=limits(at_least=1))
    """GroupNorm groups in the U-Net's conv blocks."""
    step_embedding: int = field(default=128, metadata=limits(at_least=2))
    """Size of the diffusion-step embedding."""
    train_steps: int = field(default=100, metadata=limits(at_least=1))
    """Diffusion steps of the noise schedule in training."""
    inference_steps: int = field(default=10, metadata=limits(at_least=1, at_most="train_steps"))
    """Denoising steps when acting (DDIM with eta 0 jumps over the others)."""
    eta: float = field(default=0.0, metadata=limits(at_least=0, at_most=1))
    """DDIM's stochasticity: 0 deterministic, 1 as stochastic as DDPM."""
    noise_scale: float = 1.0
    """Scale of the noise sampling draws when acting (the starting chunk, and with eta > 0
    each step's noise): 1 samples the learnt action distribution, below 1 at a lower
    temperature, toward its densest part (the low-temperature sampling of Decision Diffuser,
    Ajay et al. 2023), for tasks that want the one likeliest action rather than a draw."""
    clip_sample: bool = True
    """Clip predicted clean chunks to [-1, 1], the range of min-max normalized actions."""
    prediction: str = "epsilon"
    """What the U-Net learns to output: `epsilon`, the noise that was added (the paper's
    choice), or `sample`, the clean chunk itself. Both sample through the same DDIM steps; a
    clean-chunk target gives the network the action scale directly, which matters when the
    training budget is too short for the noise target to converge."""
    cond_hidden: list[int] = field(default_factory=list)
    """Widths of an MLP that turns the observation features into the U-Net's condition. Empty
    (the paper's choice) hands the raw features to every block's FiLM layer, so the observation
    reaches the actions only through one linear map per block; an MLP trunk like BC's lets the
    policy compute relations such as hand-to-object offsets once, before denoising. It runs
    once per chunk, not once per denoising step, so it costs little when acting."""


@dataclass
class DiffusionConfig(DenoiserConfig, ObservationConfig):
    """Diffusion Policy with a 1-D conditional U-Net."""

    ACTING: ClassVar[tuple[str, ...]] = ("n_action_steps", *DenoiserConfig.ACTING)
    """Fields that change how the trained policy acts, not its weights: `il eval` and
    `il deploy` may set them on a checkpoint."""

    obs_horizon: int = 2
    action_horizon: int = field(default=16, metadata=limits(at_least=1))
    """Actions denoised together (the chunk)."""
    n_action_steps: int = 8
    """Actions of each chunk executed before sampling again (≤ action_horizon)."""


# --- noise schedule ------------------------------------------------------------------------------
class NoiseSchedule(nn.Module):
    """The squared-cosine schedule (Nichol & Dhariwal 2021) with DDPM noising and DDIM
    sampling. Its tables are buffers, so they move with the policy to its device."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        t = torch.arange(steps + 1, dtype=torch.float64) / steps
        f = torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        self.steps = steps
        self.register_buffer("alpha_bar", torch.cumprod(1 - betas, 0).float(), persistent=False)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.alpha_bar[t].view(-1, *([1] * (x0.dim() - 1)))
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def timesteps(self, n: int) -> list[int]:
        """The `n` steps DDIM visits, evenly spaced, from the noisiest down."""
        n = max(1, min(n, self.steps))
        ratio = self.steps // n
        return [i * ratio for i in reversed(range(n))]

    def ddim_step(
        self,
        x: torch.Tensor,
        out: torch.Tensor,
        t: int,
        t_prev: int,
        *,
        prediction: str = "epsilon",
        eta: float = 0.0,
        clip: bool = True,
        generator: torch.Generator | None = None,
        noise_scale: float = 1.0,
    ) -> torch.Tensor:
        """x_t → x_{t_prev} given the network's output (Song et al. 2021, eq. 12): the
        predicted noise, or with `prediction="sample"` the predicted clean sample."""
        a = self.alpha_bar[t]
        a_prev = self.alpha_bar[t_prev] if t_prev >= 0 else torch.ones_like(a)
        if prediction == "sample":
            x0, eps = out, (x - a.sqrt() * out) / (1 - a).sqrt()
        else:
            x0, eps = (x - (1 - a).sqrt() * out) / a.sqrt(), out
        if clip:
            x0 = x0.clamp(-1, 1)
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).clamp(min=0).sqrt()
        direction = (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
        x_prev = a_prev.sqrt() * x0 + direction
        if eta > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_prev = x_prev + sigma * noise_scale * noise
        return x_prev


# --- the denoiser --------------------------------------------------------------------------------
class SinusoidalEmbedding(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(
            -math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half
        )
        angles = t.float()[:, None] * freqs[None]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ConvBlock(nn.Sequential):
    """Conv1d → GroupNorm → Mish over the time axis."""

    def __init__(self, cin: int, cout: int, kernel: int, groups: int) -> None:
        super().__init__(
            nn.Conv1d(cin, cout, kernel, padding=kernel // 2), nn.GroupNorm(groups, cout), nn.Mish()
        )


class ResidualBlock(nn.Module):
    """Two conv blocks; between them FiLM (per-channel scale and shift) from the condition."""

    def __init__(self, cin: int, cout: int, cond_dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.first = ConvBlock(cin, cout, kernel, groups)
        self.second = ConvBlock(cout, cout, kernel, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * cout))
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = rearrange(self.film(cond), "b (two c) -> two b c 1", two=2)
        y = self.first(x) * scale + shift
        return self.second(y) + self.skip(x)


class ConditionalUnet1D(nn.Module):
    """Noisy action chunk `(b, horizon, action_dim)` + diffusion step + condition → the noise."""

    def __init__(
        self,
        action_dim: int,
        cond_dim: int,
        down_dims: Sequence[int] = (128, 256, 512),
        kernel: int = 5,
        groups: int = 8,
        step_embedding: int = 128,
    ) -> None:
        super().__init__()
        self.step_encoder = nn.Sequential(
            SinusoidalEmbedding(step_embedding),
            nn.Linear(step_embedding, step_embedding * 4),
            nn.Mish(),
            nn.Linear(step_embedding * 4, step_embedding),
        )
        c = step_embedding + cond_dim
        dims = [action_dim, *down_dims]
        self.down = nn.ModuleList()
        for i, (cin, cout) in enumerate(itertools.pairwise(dims)):
            last = i == len(down_dims) - 1
            self.down.append(
                nn.ModuleList(
                    [
                        ResidualBlock(cin, cout, c, kernel, groups),
                        ResidualBlock(cout, cout, c, kernel, groups),
                        nn.Identity() if last else nn.Conv1d(cout, cout, 3, 2, 1),
                    ]
                )
            )
        mid = down_dims[-1]
        self.mid = nn.ModuleList(
            [ResidualBlock(mid, mid, c, kernel, groups), ResidualBlock(mid, mid, c, kernel, groups)]
        )
        self.up = nn.ModuleList()
        ups = list(itertools.pairwise(down_dims))[::-1]
        for cout, cin in ups:  # every level going up doubles the time axis back
            self.up.append(
                nn.ModuleList(
                    [
                        ResidualBlock(cin * 2, cout, c, kernel, groups),
                        ResidualBlock(cout, cout, c, kernel, groups),
                        nn.ConvTranspose1d(cout, cout, 4, 2, 1),
                    ]
                )
            )
        self.final = nn.Sequential(
            ConvBlock(down_dims[0], down_dims[0], kernel, groups),
            nn.Conv1d(down_dims[0], action_dim, 1),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        c = torch.cat([self.step_encoder(t).to(cond.dtype), cond], dim=-1)
        h = rearrange(x, "b t a -> b a t")
        skips = []
        for first, second, downsample in self.down:
            h = second(first(h, c), c)
            skips.append(h)
            h = downsample(h)
        for block in self.mid:
            h = block(h, c)
        for first, second, upsample in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            h = upsample(second(first(h, c), c))
        return rearrange(self.final(h), "b a t -> b t a")


# --- the denoising head, for any policy ---------------------------------------------------------
def check_denoiser(config: DenoiserConfig, action_horizon: int, normalizer: Normalizer) -> None:
    """A one-line `ValueError` where the head's settings cannot work together (what a range
    cannot say: the shapes the U-Net's layers need to fit, a clip that needs min-max actions)."""
    levels = len(config.down_dims)
    if action_horizon % 2 ** (levels - 1):
        raise ValueError(
            f"action_horizon ({action_horizon}) must be divisible by "
            f"{2 ** (levels - 1)}: the U-Net halves it {levels - 1} times"
        )
    if config.kernel_size % 2 == 0:
        raise ValueError(
            f"model.kernel_size must be odd (a convolution keeps the chunk's length), got "
            f"{config.kernel_size}"
        )
    if config.step_embedding % 2:
        raise ValueError(
            f"model.step_embedding must be even (sines and cosines in pairs), got "
            f"{config.step_embedding}"
        )
    if any(width % config.groups for width in config.down_dims):
        raise ValueError(
            f"model.groups ({config.groups}) must divide every width of model.down_dims "
            f"{config.down_dims}"
        )
    if normalizer.modes.get("action") != "min_max" and config.clip_sample:
        raise ValueError(
            "clip_sample needs actions normalized to [-1, 1]: set "
            "data.normalize.action=min_max or model.clip_sample=false"
        )
    if config.noise_scale < 0:
        raise ValueError(
            f"model.noise_scale must be ≥ 0 (1 samples as trained), not {config.noise_scale}"
        )
    if config.prediction not in ("epsilon", "sample"):
        raise ValueError(
            f"model.prediction must be 'epsilon' or 'sample', not {config.prediction!r}"
        )
    if any(width < 1 for width in config.cond_hidden):
        raise ValueError(
            f"model.cond_hidden lists layer widths, each at least 1, not {config.cond_hidden}"
        )


def condition_trunk(config: DenoiserConfig, in_dim: int) -> tuple[nn.Module, int]:
    """The MLP from features to the U-Net's condition (`cond_hidden`; none when empty), and the
    condition's size."""
    hidden = config.cond_hidden
    if not hidden:
        return nn.Identity(), in_dim
    return MLP(in_dim, hidden[:-1], hidden[-1]), hidden[-1]


def denoiser(config: DenoiserConfig, action_dim: int, cond_dim: int) -> ConditionalUnet1D:
    return ConditionalUnet1D(
        action_dim,
        cond_dim,
        config.down_dims,
        config.kernel_size,
        config.groups,
        config.step_embedding,
    )


def denoising_loss(
    unet: ConditionalUnet1D,
    schedule: NoiseSchedule,
    actions: torch.Tensor,
    cond: torch.Tensor,
    prediction: str,
) -> torch.Tensor:
    """DDPM's loss on normalized action chunks `(b, horizon, action_dim)`: noise them at a
    random step and score the U-Net's guess of the noise (or of the clean chunk).

    Padded steps past an episode's end repeat its last action: the chunk the policy should
    produce there (hold still), so they are learnt like any other."""
    noise = torch.randn_like(actions)
    t = torch.randint(0, schedule.steps, (actions.shape[0],), device=actions.device)
    predicted = unet(schedule.add_noise(actions, noise, t), t, cond)
    target = actions if prediction == "sample" else noise
    return F.mse_loss(predicted.float(), target)


def sample_chunk(
    unet: ConditionalUnet1D,
    schedule: NoiseSchedule,
    config: DenoiserConfig,
    cond: torch.Tensor,
    shape: tuple[int, int, int],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A normalized action chunk of `shape` `(b, horizon, action_dim)`, denoised from noise in
    `config.inference_steps` DDIM steps."""
    x = torch.randn(shape, generator=generator, device=cond.device, dtype=cond.dtype)
    x = x * config.noise_scale
    b = shape[0]
    steps = schedule.timesteps(config.inference_steps)
    for t, t_prev in zip(steps, [*steps[1:], -1], strict=True):
        out = unet(x, torch.full((b,), t, device=cond.device), cond)
        x = schedule.ddim_step(
            x,
            out.to(x.dtype),
            t,
            t_prev,
            prediction=config.prediction,
            eta=config.eta,
            clip=config.clip_sample,
            generator=generator,
            noise_scale=config.noise_scale,
        )
    return x


# --- the policy ----------------------------------------------------------------------------------
class DiffusionPolicy(Policy):
    name = "diffusion"
    Config = DiffusionConfig

    def __init__(self, config: DiffusionConfig, spec: DataSpec, normalizer: Normalizer) -> None:
        super().__init__(config, spec, normalizer)
        check_denoiser(config, config.action_horizon, normalizer)
        self.encoder = ObservationEncoder.from_config(
            config, spec.obs_shapes, spec.tasks, spec.instructions
        )
        self.condition, cond_dim = condition_trunk(config, self.encoder.out_dim)
        self.unet = denoiser(config, spec.action_dim, cond_dim)
        self.schedule = NoiseSchedule(config.train_steps)

    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        cond = self.condition(self.encoder(self.training_observations(batch), batch["task"]))
        actions = self.normalize("action", batch["action"].float())
        loss = denoising_loss(self.unet, self.schedule, actions, cond, self.config.prediction)
        return loss, {f"{self.config.prediction}_mse": float(loss.detach())}

    def predict_chunk(
        self,
        obs: Mapping[str, torch.Tensor],
        task: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        cond = self.condition(self.encoder(obs, task))
        generator = self.generator if generator is None else generator
        shape = (cond.shape[0], self.config.action_horizon, self.spec.action_dim)
        return sample_chunk(self.unet, self.schedule, self.config, cond, shape, generator)
