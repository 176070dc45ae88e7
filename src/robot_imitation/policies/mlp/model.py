"""The mlp network: an observation dictionary (spec keys) in, an action chunk out.

- Low-dimensional observations: an MLP. Camera observations: the suite's camera encoder
  (``policies.encoders``: a small CNN per camera whose feature maps become keypoints through a
  spatial softmax), fused with the low-dimensional inputs.
- Heads: ``mse`` (deterministic), ``gaussian`` (diagonal, learned variance), ``gmm``
  (a mixture of diagonal Gaussians), ``categorical`` (discrete actions, cross-entropy).
- Action chunking: the policy predicts the next ``chunk`` actions.
- Normalization lives inside the model (the base class's buffers, saved with the weights): the
  policy takes raw observations and returns raw actions, so a caller cannot forget or
  mismatch it.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..base import Batch, Policy
from ..encoders import ImageEncoder, SpatialSoftmax  # noqa: F401 (importable from here still)
from ..encoders import camera_encoders, camera_features
from ..registry import register_policy
from .config import HEADS, MlpConfig
from .folded import fold


def mlp(sizes: list, dropout: float = 0.0) -> nn.Sequential:
    layers = []
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(a, b), nn.GELU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


@register_policy("mlp")
class MlpPolicy(Policy):
    config_class = MlpConfig

    def __init__(self, cfg: MlpConfig):
        if cfg.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, not {cfg.head!r}")
        if cfg.head == "categorical" and cfg.num_classes < 2:
            raise ValueError("a categorical head needs num_classes >= 2")
        super().__init__(cfg)
        self.encoders = camera_encoders(cfg)
        features = cfg.input_dim + sum(e.out_dim for e in self.encoders.values())
        out = cfg.chunk * cfg.action_dim
        per_dim = {"mse": 1, "gaussian": 2, "gmm": 0, "categorical": cfg.num_classes}[cfg.head]
        head_out = out * per_dim if cfg.head != "gmm" else cfg.modes * (1 + 2 * out)
        self.net = mlp([features, *cfg.hidden, head_out], cfg.dropout)

    @property
    def loss_mean_over(self) -> str:
        # gmm averages per sample; the other heads over the batch's valid chunk steps
        return "samples" if self.cfg.head == "gmm" else "valid_steps"

    # ----------------------------------------------------------------- inputs
    def features(self, obs: dict) -> torch.Tensor:
        """Normalized low-dim observations and derived features (and image keypoints),
        concatenated in spec order."""
        return torch.cat([self.normalized_inputs(obs),
                          *camera_features(self.encoders, self.cfg, obs)], dim=-1)

    def forward(self, obs: dict) -> torch.Tensor:
        return self.net(self.features(obs))

    # ----------------------------------------------------------------- training
    def loss(self, batch: Batch) -> torch.Tensor:
        """``batch.actions``: raw (B, chunk, action_dim) (class indices for categorical). The
        network runs under the caller's autocast, the loss in float32 outside it."""
        out = self(batch.obs)
        with torch.autocast(out.device.type, enabled=False):
            return self.loss_from_output(out, batch.actions, batch.mask,
                                         self.action_base(batch.obs))

    def loss_from_output(self, out: torch.Tensor, actions: torch.Tensor,
                         mask: torch.Tensor | None = None, base: torch.Tensor | None = None
                         ) -> torch.Tensor:
        """The loss for network outputs ``out``; ``base`` from ``action_base`` for relative
        actions."""
        cfg = self.cfg
        out = out.float()
        if base is not None:
            actions = actions - base
        b = out.shape[0]
        if mask is None:
            mask = torch.ones(b, cfg.chunk, device=out.device)
        weights = mask / mask.sum().clamp_min(1.0)
        if cfg.head == "categorical":
            logits = out.reshape(b, cfg.chunk, cfg.action_dim, cfg.num_classes)
            nll = F.cross_entropy(logits.permute(0, 3, 1, 2), actions.long(), reduction="none")
            return (nll.mean(-1) * weights).sum()
        target = self.act_norm(actions.float())
        if cfg.head == "mse":
            err = (out.reshape(b, cfg.chunk, cfg.action_dim) - target).pow(2).mean(-1)
            return (err * weights).sum()
        if cfg.head == "gaussian":
            mean, log_std = out.reshape(b, cfg.chunk, cfg.action_dim, 2).unbind(-1)
            log_std = log_std.clamp(-7.0, 2.0)
            nll = 0.5 * ((target - mean) / log_std.exp()).pow(2) + log_std
            return (nll.mean(-1) * weights).sum()
        # gmm over the whole chunk (one mixture of chunk * action_dim dimensional Gaussians)
        k, d = cfg.modes, cfg.chunk * cfg.action_dim
        logits, rest = out[:, :k], out[:, k:].reshape(b, k, 2, d)
        mean, log_std = rest[:, :, 0], rest[:, :, 1].clamp(-7.0, 2.0)
        flat = target.reshape(b, 1, d)
        m = mask.repeat_interleave(cfg.action_dim, dim=1).reshape(b, 1, d)
        log_prob = (-0.5 * ((flat - mean) / log_std.exp()).pow(2) - log_std) * m
        mix = torch.logsumexp(F.log_softmax(logits, -1) + log_prob.sum(-1), dim=-1)
        return -(mix / m.sum((1, 2)).clamp_min(1.0)).mean()

    # ----------------------------------------------------------------- acting
    def inference_module(self) -> nn.Module | None:
        """With an mse or gaussian head: ``act`` (of the split head, with cameras) with the
        normalization, the derived features and the action scaling folded into the linear
        layers (``folded``)."""
        return fold(self)

    @torch.no_grad()
    def act(self, obs: dict) -> torch.Tensor:
        """Raw action chunks (B, chunk, action_dim): the mean, or the likeliest mode/class."""
        cfg = self.cfg
        out = self(obs).float()
        b = out.shape[0]
        if cfg.head == "categorical":
            logits = out.reshape(b, cfg.chunk, cfg.action_dim, cfg.num_classes)
            return logits.argmax(-1).float()
        if cfg.head == "mse":
            mean = out.reshape(b, cfg.chunk, cfg.action_dim)
        elif cfg.head == "gaussian":
            mean = out.reshape(b, cfg.chunk, cfg.action_dim, 2)[..., 0]
        else:
            k, d = cfg.modes, cfg.chunk * cfg.action_dim
            best = out[:, :k].argmax(-1)
            means = out[:, k:].reshape(b, k, 2, d)[:, :, 0]
            mean = means[torch.arange(b, device=out.device), best].reshape(
                b, cfg.chunk, cfg.action_dim)
        return self.raw_actions(mean, obs)
