"""A policy family that lives outside the package, as another package's would: a config
dataclass of its own and a two-layer network on the normalized low-dimensional inputs. The
tests register it themselves, or let a node process find it through an entry point in the group
``robot_imitation.policies``; nothing in robot_imitation names it."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from robot_imitation.policies.base import Batch, Policy
from robot_imitation.policies.config import PolicyConfig
from robot_imitation.settings import Limits, setting


@dataclass
class TinyConfig(PolicyConfig):
    width: int = setting(16, Limits(int, low=1, high=1024), help="hidden units")


class TinyPolicy(Policy):
    config_class = TinyConfig

    def __init__(self, cfg: TinyConfig):
        super().__init__(cfg)
        self.net = nn.Sequential(nn.Linear(cfg.input_dim, cfg.width), nn.Tanh(),
                                 nn.Linear(cfg.width, cfg.chunk * cfg.action_dim))

    def predict(self, obs: dict) -> torch.Tensor:
        out = self.net(self.normalized_inputs(obs)).float()
        return out.reshape(out.shape[0], self.cfg.chunk, self.cfg.action_dim)

    def loss(self, batch: Batch):
        err = (self.predict(batch.obs) - self.normalize_actions(batch.actions, batch.obs))
        per_step = err.pow(2).mean(-1)                       # (B, chunk)
        mask = torch.ones_like(per_step) if batch.mask is None else batch.mask
        per_sample = (per_step * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)
        return per_sample.mean(), {"rms_error": per_step.detach().mean().sqrt()}

    @torch.no_grad()
    def act(self, obs: dict) -> torch.Tensor:
        return self.raw_actions(self.predict(obs), obs)
