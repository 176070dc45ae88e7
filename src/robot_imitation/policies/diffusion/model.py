"""The diffusion network: a denoiser over action chunks conditioned on the observation (as
Diffusion Policy), with a hand-written noise schedule and DDIM sampler (``DdimSchedule``).

Training: a chunk x0 (normalized, relative where declared) is noised to
x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps at a random step t of a squared-cosine schedule;
the denoiser (``denoiser`` unet: a 1D temporal U-Net over the chunk's steps, ``UNet1d``; mlp:
residual MLP blocks on the flattened chunk; both FiLM-conditioned on the observation's features,
the normalized low-dimensional inputs and each camera's keypoints from the suite's camera
encoder, and on an embedding of t) predicts eps; the loss is the mean squared error, masked
past the episode's end. Inference: ``inference_steps`` deterministic DDIM steps (evenly spaced
from step 0) from an initial noise drawn once, when the policy is built, from the config's seed
(``initial_noise``, the same for every row of a batch): the same observation gives the same
chunk, wherever it sits in a batch. The noise and the timesteps are fixed by the config, so
``act`` is a pure function of the observation: tracing unrolls the sampler's denoiser calls
into one graph (TorchScript, ONNX) that computes what the loop computes.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..base import Batch, Policy
from ..encoders import camera_encoders, camera_features
from ..registry import register_policy
from .config import DiffusionConfig


class DdimSchedule:
    """Squared-cosine noise schedule over ``steps`` and the DDIM (eta = 0) update."""

    def __init__(self, steps: int, s: float = 0.008):
        t = torch.arange(steps + 1, dtype=torch.float64) / steps
        f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        alpha_bar = (f / f[0])[1:].clamp(1e-5, 1.0)
        self.steps = steps
        self.alpha_bar = alpha_bar.float()           # abar_t, t = 0..steps-1

    def noise(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
              alpha_bar: torch.Tensor | None = None) -> torch.Tensor:
        """x_t for clean samples ``x0`` (B, ...) at steps ``t`` (B,). ``alpha_bar``: the
        schedule already on ``x0``'s device (the policy's buffer: no host-to-device copy per
        step, so that a training step stays capturable in a CUDA graph, and no state of its
        own that a compiled loss would guard on); default: copied from ``self.alpha_bar``."""
        on = self.alpha_bar.to(x0.device) if alpha_bar is None else alpha_bar
        ab = on[t].view(-1, *([1] * (x0.dim() - 1)))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    def timesteps(self, n: int) -> list:
        """``n`` steps, evenly spaced from 0 (step i at ``i * steps // n``: ``steps / n``
        apart), the noisiest first (the "leading" spacing): the first is not the schedule's
        last step, whose signal is so small (abar near 0) that its clean estimate divides the
        float rounding of the denoiser's output by sqrt(abar), hundreds of times over. (A
        whole stride of ``steps // n`` started 51 steps of 100 at step 50, signal 0.7, on
        pure noise.)"""
        return [i * self.steps // n for i in range(n - 1, -1, -1)]

    def step(self, x_t: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int | None,
             clip: float = 1.5) -> tuple:
        """One DDIM step: (x at ``t_prev``, or the clean estimate when None; the estimate)."""
        ab = self.alpha_bar[t].to(x_t.device)
        x0 = ((x_t - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-clip, clip)
        if t_prev is None:
            return x0, x0
        ab_prev = self.alpha_bar[t_prev].to(x_t.device)
        eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()  # consistent with the clipped x0
        return ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps, x0


def step_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (B, dim) of diffusion steps ``t`` (B,)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class ConvBlock(nn.Sequential):
    """Temporal convolution, group norm, Mish: (B, C_in, T) -> (B, C_out, T)."""

    def __init__(self, c_in: int, c_out: int, kernel: int):
        super().__init__(nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2),
                         nn.GroupNorm(8, c_out), nn.Mish())


class ConvResidualBlock(nn.Module):
    """Two convolution blocks, the second FiLM-modulated by the condition, and a skip."""

    def __init__(self, c_in: int, c_out: int, cond: int, kernel: int):
        super().__init__()
        self.first = ConvBlock(c_in, c_out, kernel)
        self.second = ConvBlock(c_out, c_out, kernel)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond, 2 * c_out))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(c).unsqueeze(-1).chunk(2, dim=1)
        return self.second(self.first(x) * (1 + scale) + shift) + self.skip(x)


class UNet1d(nn.Module):
    """A 1D temporal U-Net over a chunk (B, T, A) -> (B, T, A), conditioned on a vector
    (B, cond) at every block (as Diffusion Policy's convolutional denoiser): per level two
    residual blocks, then the chunk halved (stride-2 convolution); back up through the levels
    with the skip connections, doubling the chunk (transposed convolution). A chunk whose
    length does not halve evenly is padded with zeros and cropped again."""

    def __init__(self, action_dim: int, cond: int, channels: list, kernel: int):
        super().__init__()
        self.levels = len(channels)
        chans = [action_dim, *channels]
        self.down = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(zip(chans[:-1], chans[1:])):
            self.down.append(nn.ModuleList([
                ConvResidualBlock(c_in, c_out, cond, kernel),
                ConvResidualBlock(c_out, c_out, cond, kernel),
                nn.Conv1d(c_out, c_out, 3, stride=2, padding=1) if i < self.levels - 1
                else nn.Identity()]))
        deepest = channels[-1]
        self.mid = nn.ModuleList([ConvResidualBlock(deepest, deepest, cond, kernel)
                                  for _ in range(2)])
        self.up = nn.ModuleList()
        for c_out, c_in in reversed(list(zip(channels[:-1], channels[1:]))):
            self.up.append(nn.ModuleList([
                ConvResidualBlock(2 * c_in, c_out, cond, kernel),
                ConvResidualBlock(c_out, c_out, cond, kernel),
                nn.ConvTranspose1d(c_out, c_out, 4, stride=2, padding=1)]))
        self.final = nn.Sequential(ConvBlock(channels[0], channels[0], kernel),
                                   nn.Conv1d(channels[0], action_dim, 1))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        multiple = 2 ** (self.levels - 1)
        pad = -length % multiple
        h = F.pad(x.transpose(1, 2), (0, pad))
        skips = []
        for first, second, down in self.down:
            h = second(first(h, c), c)
            skips.append(h)
            h = down(h)
        for block in self.mid:
            h = block(h, c)
        for first, second, up in self.up:
            h = up(second(first(torch.cat([h, skips.pop()], dim=1), c), c))
        return self.final(h)[..., :length].transpose(1, 2)


class ResidualBlock(nn.Module):
    def __init__(self, width: int, cond: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.film = nn.Linear(cond, 2 * width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(c).chunk(2, dim=-1)
        h = self.norm(x) * (1 + scale) + shift
        return x + self.fc2(F.mish(self.fc1(F.mish(h))))


@register_policy("diffusion")
class DiffusionPolicy(Policy):
    config_class = DiffusionConfig
    # a chunk of actions is one sample of a plan: executed in part, the next one computed ahead
    deploy_defaults = {"chunk_mode": "chunk", "prefetch": 1}
    loss_mean_over = "valid_steps"  # the noise error is a mean over the valid chunk steps
    action_statistics = "chunk"     # the DDIM step clips its clean estimate to +-1.5

    def __init__(self, cfg: DiffusionConfig):
        super().__init__(cfg)
        w, size = cfg.width, cfg.chunk * cfg.action_dim
        self.schedule = DdimSchedule(cfg.train_steps)
        self.encoders = camera_encoders(cfg)
        features = cfg.input_dim + sum(e.out_dim for e in self.encoders.values())
        self.cond = nn.Sequential(nn.Linear(features + 64, w), nn.Mish(), nn.Linear(w, w))
        if cfg.denoiser == "unet":
            self.unet = UNet1d(cfg.action_dim, w, list(cfg.unet_channels), cfg.kernel_size)
        else:
            self.inp = nn.Linear(size, w)
            self.blocks = nn.ModuleList(ResidualBlock(w, w) for _ in range(cfg.blocks))
            self.out = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, size))
        # the sampler's starting point: made from the config's seed, so not saved with the
        # weights (checkpoints made before it still load)
        gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
        self.register_buffer("initial_noise", torch.randn(1, cfg.chunk, cfg.action_dim,
                                                          generator=gen), persistent=False)
        # the noise schedule, moved with the policy (nor saved: made from the config)
        self.register_buffer("alpha_bar", self.schedule.alpha_bar.clone(), persistent=False)

    def features(self, obs: dict) -> torch.Tensor:
        """What the denoiser is conditioned on: the normalized low-dimensional observations and
        derived features, and each camera's keypoints, in spec order (computed once per chunk,
        not per denoising step)."""
        return torch.cat([self.normalized_inputs(obs),
                          *camera_features(self.encoders, self.cfg, obs)], dim=-1)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, features: torch.Tensor
                ) -> torch.Tensor:
        """Predicted noise (B, chunk, A) of noisy chunks ``x_t`` at steps ``t``, conditioned
        on the observation's ``features``."""
        c = self.cond(torch.cat([features, step_embedding(t, 64)], dim=-1))
        if self.cfg.denoiser == "unet":
            return self.unet(x_t, c)
        h = self.inp(x_t.flatten(1))
        for block in self.blocks:
            h = block(h, c)
        return self.out(h).view_as(x_t)

    def loss(self, batch: Batch):
        obs, cfg = batch.obs, self.cfg
        features = self.features(obs)
        x0 = self.normalize_actions(batch.actions, obs)
        b = x0.shape[0]
        t = torch.randint(0, cfg.train_steps, (b,), device=x0.device)
        eps = torch.randn_like(x0)
        x_t = self.schedule.noise(x0, t, eps, self.alpha_bar)
        err = (self.denoise(x_t, t, features) - eps).pow(2).mean(-1)
        mask = torch.ones_like(err) if batch.mask is None else batch.mask.float()
        return (err * mask).sum() / mask.sum().clamp_min(1.0)

    def act(self, obs: dict) -> torch.Tensor:
        cfg = self.cfg
        features = self.features(obs)
        b = features.shape[0]
        x = self.initial_noise.expand(b, -1, -1)
        steps = self.schedule.timesteps(cfg.inference_steps)
        for i, t in enumerate(steps):
            tt = torch.full((b,), t, device=features.device, dtype=torch.long)
            eps = self.denoise(x, tt, features)
            x, _ = self.schedule.step(x, eps, t, steps[i + 1] if i + 1 < len(steps) else None)
        return self.raw_actions(x, obs)
