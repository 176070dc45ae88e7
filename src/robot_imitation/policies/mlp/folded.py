"""The mlp's ``act`` for one observation with its constants folded, for export.

``MlpPolicy.act`` on the flat input (the low-dimensional observations side by side, as the
inference backends fill it) is a chain of small steps around the network: slices per
observation, the derived features (differences), the normalization, the network, the action
scaling and the relative actions' base added back. Exported as they are that is about 118
ONNX operators (25 after ONNX Runtime's own graph optimizations), and for a 256x256 network
ONNX Runtime spends more time dispatching them than computing the three matrix products. All
but the network are affine in the flat input, so they fold into linear layers (in float64,
then stored as float32):

- ``select``: the flat input to the network's input order, derived features included (every
  entry 0 or +-1: each output is an input, or the difference of two, rounded once as the plain
  computation rounds it), minus the normalization's shift (its bias);
- the first layer with its weights divided by the normalization's scale (with cameras, the
  split head's: each camera's features join the selected inputs as they are, and their
  columns of the first layer are kept); the hidden layers as they are;
- the last layer with the action scale and shift folded in, keeping the mean's outputs only
  (a gaussian head predicts a log-std beside each mean that acting ignores);
- ``base``: the relative actions' base (the measured positions they are relative to), picked
  from the flat input and added.

The shift is subtracted before the division is applied (as the plain computation does), so an
input whose training statistics had no spread (scale clamped to 1e-6) is not multiplied out to
large values that then cancel. The result equals ``act`` up to float32 rounding (tests hold
them together); the backends check every candidate against the plain ``act`` anyway.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn


class FoldedMlp(nn.Module):
    """low (1, L) float32, and each camera's features (1, F) in ``image_keys`` order (a policy
    with cameras, split: ``deploy.backends.split_policy``) -> the raw chunk (chunk, action_dim).
    """

    def __init__(self, select: nn.Linear, body: nn.Sequential, last: nn.Linear,
                 base: nn.Linear | None, chunk: int, action_dim: int):
        super().__init__()
        self.select, self.body, self.last, self.base = select, body, last, base
        self.shape = (chunk, action_dim)

    def forward(self, low: torch.Tensor, *features: torch.Tensor) -> torch.Tensor:
        x = self.select(low)
        if features:  # the cameras' keypoints follow the low-dimensional inputs, as in act
            x = torch.cat([x, *features], dim=-1)
        out = self.last(self.body(x))
        if self.base is not None:
            out = out + self.base(low)
        return out.reshape(self.shape)


def _linear(weight: np.ndarray, bias: np.ndarray | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight))
        if bias is not None:
            layer.bias.copy_(torch.from_numpy(bias))
    return layer.requires_grad_(False)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def fold(policy) -> FoldedMlp | None:
    """``policy`` (an ``MlpPolicy``) folded, or None where it does not fold: a gmm or
    categorical head (acting picks a mode or class: not affine). With cameras, the head of the
    split policy is folded (its inputs: the flat low-dimensional input and each camera's
    features); the camera encoders run apart as they are."""
    cfg = policy.cfg
    if cfg.head not in ("mse", "gaussian"):
        return None
    width = cfg.low_dim
    rows, at = {}, 0
    for key, size in zip(cfg.low_dim_keys, cfg.low_dim_sizes):
        rows[key] = np.eye(width)[at:at + int(size)]
        at += int(size)
    for f in policy.derived:
        a, b = f.inputs
        rows[f.key] = rows[a][:f.size] - rows[b][:f.size]
    select = np.concatenate([rows[k] for k in cfg.low_dim_keys]
                            + [rows[f.key] for f in policy.derived])
    linears = [m for m in policy.net if isinstance(m, nn.Linear)]
    first, last = linears[0], linears[-1]
    body = []
    for m in policy.net:
        if m is last or isinstance(m, nn.Dropout):
            continue
        if m is first:  # its low-dimensional columns divided by the scale, the cameras' kept
            weight = _np(first.weight)
            weight[:, :cfg.input_dim] /= _np(policy.obs_norm.scale)[None, :]
            m = _linear(weight, _np(first.bias))
        body.append(copy.deepcopy(m))  # a module of its own: the policy's stay untouched
    chunk, dim = cfg.chunk, cfg.action_dim
    weight, bias = _np(last.weight), _np(last.bias)
    if cfg.head == "gaussian":  # (chunk, dim, 2): the means are the even outputs
        weight, bias = weight[0::2], bias[0::2]
    scale = np.tile(_np(policy.act_norm.scale), chunk)
    shift = np.tile(_np(policy.act_norm.shift), chunk)
    base = None
    if cfg.relative:
        starts = dict(zip(cfg.low_dim_keys, np.cumsum([0] + list(cfg.low_dim_sizes[:-1]))))
        pick = np.zeros((chunk * dim, width))
        for offset, size, key in cfg.relative:
            for c in range(chunk):
                for j in range(int(size)):
                    pick[c * dim + int(offset) + j, int(starts[key]) + j] = 1.0
        base = _linear(pick, None)
    module = FoldedMlp(_linear(select, -_np(policy.obs_norm.shift)), nn.Sequential(*body),
                       _linear(scale[:, None] * weight, scale * bias + shift), base, chunk, dim)
    return module.float().eval()
