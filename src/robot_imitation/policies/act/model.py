"""The act network: a conditional VAE over action chunks with a transformer (as ACT).

Training: a CVAE encoder (a transformer encoder over [CLS, low-dimensional observation, the
demonstrated chunk]) gives the posterior of a latent z; the policy (a transformer encoder over
[z, low-dimensional observation, one token per camera], a transformer decoder with one learned
query per action of the chunk) reconstructs the chunk from z and the observation. A camera's
token is its keypoints from the suite's camera encoder (``policies.encoders``) projected to
``dim_model``; as in ACT, the CVAE encoder sees no camera. Loss: L1 on the normalized
(relative where declared) chunk, masked past the episode's end, plus ``kl_weight`` times the KL
divergence to N(0, I).
Inference: z at the prior's mean (zero), so ``act`` is deterministic and a pure function of
the observation: TorchScript tracing and ONNX export run it (``Policy.traceable``).

Normalization lives inside the model (the base class's buffers): raw observations in, raw
actions out.
"""
from __future__ import annotations

import torch
from torch import nn

from ..base import Batch, Policy
from ..encoders import camera_encoders, camera_features
from ..registry import register_policy
from .config import ActConfig


@register_policy("act")
class ActPolicy(Policy):
    config_class = ActConfig
    # a chunk of actions is one sample of a plan, executed in part (a quarter: contact needs
    # feedback), the next computed from the newest observation (inference takes under a
    # millisecond): on push_obstacle 49/50, against 43/50 executing half, computed a tick
    # ahead
    deploy_defaults = {"chunk_mode": "chunk", "chunk_execute": 2, "prefetch": 0}
    # the L1 term is a mean over the batch's valid chunk steps (the KL term, per sample, is
    # scaled with it under DDP: a close approximation when ranks hold alike shares of padding)
    loss_mean_over = "valid_steps"

    def __init__(self, cfg: ActConfig):
        super().__init__(cfg)
        d = cfg.dim_model

        def encoder(layers: int) -> nn.TransformerEncoder:
            layer = nn.TransformerEncoderLayer(d, cfg.heads, cfg.feedforward, cfg.dropout,
                                               batch_first=True, norm_first=True)
            return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

        # the CVAE encoder: [CLS, observation, chunk] -> the latent's mean and log variance
        self.vae_cls = nn.Parameter(torch.zeros(1, 1, d))
        self.vae_obs = nn.Linear(cfg.input_dim, d)
        self.vae_action = nn.Linear(cfg.action_dim, d)
        self.vae_pos = nn.Parameter(torch.zeros(1, 2 + cfg.chunk, d))
        self.vae_encoder = encoder(cfg.vae_layers)
        self.vae_out = nn.Linear(d, 2 * cfg.latent_dim)
        # the policy: [z, observation, a token per camera]; one query per action of the chunk
        self.latent_in = nn.Linear(cfg.latent_dim, d)
        self.obs_in = nn.Linear(cfg.input_dim, d)
        self.encoders = camera_encoders(cfg)
        self.camera_in = nn.ModuleDict({key: nn.Linear(e.out_dim, d)
                                        for key, e in self.encoders.items()})
        self.memory_pos = nn.Parameter(torch.zeros(1, 2 + len(cfg.image_keys), d))
        self.encoder = encoder(cfg.encoder_layers)
        layer = nn.TransformerDecoderLayer(d, cfg.heads, cfg.feedforward, cfg.dropout,
                                           batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, cfg.decoder_layers)
        self.queries = nn.Parameter(torch.zeros(1, cfg.chunk, d))
        self.action_out = nn.Linear(d, cfg.action_dim)
        for p in (self.vae_cls, self.vae_pos, self.memory_pos, self.queries):
            nn.init.normal_(p, std=0.02)

    def _decode(self, z: torch.Tensor, low: torch.Tensor, cameras: list) -> torch.Tensor:
        """Normalized chunks (B, chunk, A) from latents (B, L), normalized inputs (B, I) and
        each camera's keypoints (B, 2K)."""
        tokens = [self.latent_in(z), self.obs_in(low)]
        tokens += [self.camera_in[key](f) for key, f in zip(self.cfg.image_keys, cameras)]
        memory = torch.stack(tokens, dim=1) + self.memory_pos
        memory = self.encoder(memory)
        queries = self.queries.expand(low.shape[0], -1, -1)
        return self.action_out(self.decoder(queries, memory))

    def loss(self, batch: Batch):
        obs, cfg = batch.obs, self.cfg
        low = self.normalized_inputs(obs)
        target = self.normalize_actions(batch.actions, obs)  # (B, chunk, A)
        b = low.shape[0]
        mask = torch.ones(b, cfg.chunk, device=low.device) if batch.mask is None \
            else batch.mask.float()
        tokens = torch.cat([self.vae_cls.expand(b, -1, -1), self.vae_obs(low)[:, None],
                            self.vae_action(target)], dim=1) + self.vae_pos
        # steps past the episode's end are padding the posterior must not see
        padding = torch.cat([torch.zeros(b, 2, dtype=torch.bool, device=low.device),
                             mask < 0.5], dim=1)
        stats = self.vae_out(self.vae_encoder(tokens, src_key_padding_mask=padding)[:, 0])
        mu, logvar = stats.chunk(2, dim=-1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        predicted = self._decode(z, low, camera_features(self.encoders, cfg, obs))
        l1 = ((predicted - target).abs().mean(-1) * mask).sum() / mask.sum().clamp_min(1.0)
        kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(-1).mean()
        return l1 + cfg.kl_weight * kl, {"l1": l1.detach(), "kl": kl.detach()}

    def act(self, obs: dict) -> torch.Tensor:
        low = self.normalized_inputs(obs)
        z = torch.zeros(low.shape[0], self.cfg.latent_dim, device=low.device)
        cameras = camera_features(self.encoders, self.cfg, obs)
        return self.raw_actions(self._decode(z, low, cameras), obs)
