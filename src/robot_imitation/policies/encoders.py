"""The suite's camera encoder, shared by the policy families: a small CNN per camera whose
feature maps become keypoints through a spatial softmax (uint8 frames in, 2K coordinates out).

Every family builds its encoders with ``camera_encoders(cfg)`` (one per image key, from the
config's ``image_channels`` and ``keypoints``, the options ``config.CameraOptions`` declares)
and keeps them as its ``encoders`` attribute, so a checkpoint names their weights
``encoders.<image key>.net.<i>...`` in every family. ``camera_features`` gives each camera's
keypoints, in the spec's order.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SpatialSoftmax(nn.Module):
    """Feature maps (B, C, H, W) -> expected image coordinates of each channel (B, 2C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        attention = F.softmax(x.reshape(b, c, h * w).float(), dim=-1)
        # coordinates in [-1, 1] (arange rather than linspace: it exports to ONNX in float32)
        ys = torch.arange(h, device=x.device, dtype=attention.dtype) * (2.0 / max(h - 1, 1)) - 1
        xs = torch.arange(w, device=x.device, dtype=attention.dtype) * (2.0 / max(w - 1, 1)) - 1
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        ex = (attention * grid_x.reshape(1, 1, -1)).sum(-1)
        ey = (attention * grid_y.reshape(1, 1, -1)).sum(-1)
        return torch.cat([ex, ey], dim=1)


class ImageEncoder(nn.Module):
    """uint8 (B, H, W, C) -> keypoints (B, 2K).

    Under bf16 autocast on the GPU (the trainer's ``amp``) the convolutions and group norms all
    run in bf16 (``forward_in``): autocast itself runs each group norm in float32, with a cast
    before and after it (in a profile of an image policy's training step: dtype casts 21% of
    the GPU time, group norms 19%; on an H200 at batch 1,024 the trainer's step made 52.7 k
    frames/s as autocast runs it, 66.4 k in bf16). The weights stay float32 (the
    optimizer's); their gradients come back through the casts. Elsewhere (inference, the CPU)
    it runs in float32 as before.
    """

    def __init__(self, in_channels: int, channels: list, keypoints: int):
        super().__init__()
        layers, c = [], in_channels
        for i, out in enumerate(channels):
            layers += [nn.Conv2d(c, out, 5 if i == 0 else 3, stride=2 if i == 0 else 1,
                                 padding=2 if i == 0 else 1), nn.GroupNorm(8, out), nn.ReLU()]
            c = out
        layers.append(nn.Conv2d(c, keypoints, 1))
        self.net = nn.Sequential(*layers)
        self.softmax = SpatialSoftmax()
        self.out_dim = 2 * keypoints

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.is_cuda and torch.is_autocast_enabled("cuda") \
                and torch.get_autocast_dtype("cuda") == torch.bfloat16:
            return self.forward_in(images, torch.bfloat16)
        x = images.permute(0, 3, 1, 2).float().div_(255.0).sub_(0.5)
        x = x.contiguous(memory_format=torch.channels_last)
        return self.softmax(self.net(x))

    def forward_in(self, images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The keypoints with every layer computed in ``dtype`` (autocast off; the spatial
        softmax in float32, as always). The frames are scaled in float32 first, as the first
        convolution gets them under autocast. When compiled, the first convolution is one
        matrix product over the frames' patches (``conv_by_columns``)."""
        with torch.autocast(images.device.type, enabled=False):
            x = images.permute(0, 3, 1, 2).float().div_(255.0).sub_(0.5).to(dtype)
            layers = list(self.net)
            if torch.compiler.is_compiling() and columns_fit(layers[0]):
                x = conv_by_columns(x, layers.pop(0), dtype)
            for layer in layers:
                if isinstance(layer, nn.Conv2d):
                    x = F.conv2d(x, layer.weight.to(dtype), layer.bias.to(dtype), layer.stride,
                                 layer.padding, layer.dilation, layer.groups)
                elif isinstance(layer, nn.GroupNorm):
                    x = group_norm_in(x, layer, dtype)
                else:
                    x = layer(x)
            return self.softmax(x)


def group_norm_in(x: torch.Tensor, norm: nn.GroupNorm, dtype: torch.dtype) -> torch.Tensor:
    """``norm`` over ``x`` with its weights in ``dtype`` (``forward_in``'s group norms; this
    and ``conv_by_columns`` are looked up by name at each call, so ``bench/step_profile.py
    --encoder-variant`` can time alternatives to them)."""
    return F.group_norm(x, norm.num_groups, norm.weight.to(dtype), norm.bias.to(dtype),
                        norm.eps)


def columns_fit(conv: nn.Conv2d) -> bool:
    """Whether ``conv_by_columns`` computes ``conv`` (no dilation, no groups, zero padding
    given in pixels)."""
    return conv.dilation == (1, 1) and conv.groups == 1 and isinstance(conv.padding, tuple) \
        and conv.padding_mode == "zeros"


def conv_by_columns(x: torch.Tensor, conv: nn.Conv2d, dtype: torch.dtype) -> torch.Tensor:
    """``conv`` over ``x`` (B, C, H, W) as one matrix product: the image's patches as rows
    (``F.unfold``), each row padded to a multiple of 8 values, times the weights in ``dtype``.
    The output is (B, O, H', W') in channels-last memory.

    The encoder's first convolution takes it when its loss is compiled (``forward_in``). That
    convolution has 3 input channels and cuDNN's kernels for it are slow: in a profile of the
    compiled camera policy's step on an H100 at batch 1,024, its forward took 0.65 ms, its weight
    gradient 0.39 ms and two padding kernels 0.16 ms. The step's kernels took 8.65 ms with this
    product against 9.02 ms (4 % less), of which 0.67 ms is Inductor's kernel building the rows.
    Recasting the convolution over 2 x 2 pixel blocks (12 channels, 3 x 3) was slower: 9.81 ms,
    cuDNN's weight gradient alone 1.6 ms."""
    b, _, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    rows = F.unfold(x, conv.kernel_size, padding=conv.padding, stride=conv.stride)
    k = rows.shape[1]
    rows = F.pad(rows.transpose(1, 2), (0, -k % 8)).reshape(b * ho * wo, k + -k % 8)
    weight = F.pad(conv.weight.to(dtype).reshape(conv.out_channels, k), (0, -k % 8))
    if conv.bias is None:
        out = rows @ weight.t()
    else:
        out = torch.addmm(conv.bias.to(dtype), rows, weight.t())
    return out.reshape(b, ho, wo, conv.out_channels).permute(0, 3, 1, 2)


def camera_encoders(cfg) -> nn.ModuleDict:
    """One ``ImageEncoder`` per camera of ``cfg`` (a ``PolicyConfig`` with ``CameraOptions``),
    by image key (empty for a low-dimensional spec)."""
    return nn.ModuleDict({key: ImageEncoder(shape[2], cfg.image_channels, cfg.keypoints)
                          for key, shape in zip(cfg.image_keys, cfg.image_shapes)})


def camera_features(encoders: nn.ModuleDict, cfg, obs: dict) -> list:
    """Each camera's keypoints (B, 2K), in the spec's order of ``cfg.image_keys``."""
    return [encoders[key](obs[key]) for key in cfg.image_keys]


class EncoderStage(nn.Module):
    """One stage of an ``ImageEncoder`` cut into stages (``encoder_stages``): output channels
    ``[first, last)`` of one of its convolutions with their group norm and ReLU, or its last
    (1 x 1) convolution with the spatial softmax. It reads activation ``source`` (0: the frame,
    uint8 (1, H, W, C), scaled as ``forward`` scales it; i: the output of convolution i) and
    writes those channels of activation ``source + 1`` (the last: the keypoints).

    A group norm's groups never straddle two stages, so each stage computes its channels with
    the arithmetic of the whole encoder."""

    def __init__(self, conv: nn.Conv2d, norm: nn.GroupNorm | None, source: int, first: int,
                 last: int, softmax: SpatialSoftmax | None = None):
        super().__init__()
        self.source, self.first, self.last = source, first, last
        self.stride, self.padding = conv.stride, conv.padding
        self.register_buffer("weight", conv.weight.detach()[first:last].clone())
        self.register_buffer("bias", None if conv.bias is None
                             else conv.bias.detach()[first:last].clone())
        self.groups = 0
        if norm is not None:
            self.groups = (last - first) // (norm.num_channels // norm.num_groups)
            self.register_buffer("norm_weight", norm.weight.detach()[first:last].clone())
            self.register_buffer("norm_bias", norm.bias.detach()[first:last].clone())
            self.eps = norm.eps
        self.softmax = softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.source == 0:
            x = x.permute(0, 3, 1, 2).float().div(255.0).sub(0.5)
        x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        if self.groups:
            x = F.relu(F.group_norm(x, self.groups, self.norm_weight, self.norm_bias, self.eps))
        return x if self.softmax is None else self.softmax(x)


def encoder_stages(encoder: nn.Module, max_macs: float, height: int, width: int
                   ) -> list[EncoderStage] | None:
    """``encoder`` (an ``ImageEncoder`` of frames ``height`` x ``width``) as stages to run one
    after another, each of at most about ``max_macs`` multiply-adds: a convolution heavier than
    that is cut by output channels into equal parts of whole group-norm groups (as many as it
    needs, at most one per group). None for an encoder of another form."""
    layers = list(getattr(encoder, "net", ()))
    if not isinstance(encoder, ImageEncoder) or len(layers) % 3 != 1:
        return None
    blocks = [layers[i:i + 3] for i in range(0, len(layers) - 1, 3)]
    if not all(isinstance(c, nn.Conv2d) and isinstance(n, nn.GroupNorm) and isinstance(r, nn.ReLU)
               for c, n, r in blocks) or not isinstance(layers[-1], nn.Conv2d):
        return None
    if not all(c.dilation == (1, 1) and c.groups == 1 and isinstance(c.padding, tuple)
               and c.padding_mode == "zeros" for c in [b[0] for b in blocks] + layers[-1:]):
        return None   # (the stages compute plain convolutions, zero-padded)
    stages, h, w = [], height, width
    for source, (conv, norm, _) in enumerate(blocks):
        (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
        h, w = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        macs = h * w * conv.out_channels * conv.in_channels * kh * kw
        groups = norm.num_groups
        parts = next((n for n in range(1, groups + 1)
                      if groups % n == 0 and macs / n <= max_macs), groups)
        step = conv.out_channels // parts
        stages += [EncoderStage(conv, norm, source, i * step, (i + 1) * step)
                   for i in range(parts)]
    last = layers[-1]
    stages.append(EncoderStage(last, None, len(blocks), 0, last.out_channels, encoder.softmax))
    return stages
