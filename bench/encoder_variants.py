"""Alternatives to the camera encoder's compiled layers, for timing on a GPU against it.

The encoder's bf16 path (``encoders.ImageEncoder.forward_in``) computes its group norms with
``encoders.group_norm_in`` and, compiled, its first convolution with
``encoders.conv_by_columns``, both looked up by name at each call. A variant here replaces one
or both for the whole process (``use``); ``check`` first compares the variant with the encoder
as it is, in float32 on the given device, as compiled code runs it (keypoints and every weight
gradient). ``bench/step_profile.py --encoder-variant NAME`` checks, then profiles.

- ``channel-stats-gn``: the group norm's statistics from per-channel sums over the image
  (mean and mean square of each channel, then of each group; the variance as their difference
  in float32), then one scale and shift per channel. In a profile of the compiled step on an
  H100 at batch 1,024, Inductor's kernels for the group norm as it is took 3.2 of 9.0 ms; the
  one that sums each group over a channels-last tensor read 0.15 GB in 0.22 ms (0.7 TB/s,
  against about 3 for a copy): each group is 4 channels of 32, 8 bytes in every 64. Per
  channel, the sums read whole rows. Exact in float64 (the tests' check below).
- ``patch-rows``: the first convolution's patch rows read from the frames as they lie (B, H, W,
  C), through a strided view of the padded frames, instead of ``F.unfold`` over the permuted
  ones: Inductor's kernel building the rows from ``F.unfold`` took 0.67 ms for 0.38 GB.
- ``both``: the two together.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from robot_imitation.policies import encoders

AS_IS = {"group_norm_in": encoders.group_norm_in, "conv_by_columns": encoders.conv_by_columns}


def group_norm_by_channel_stats(x: torch.Tensor, norm, dtype: torch.dtype) -> torch.Tensor:
    b, c = x.shape[:2]
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    m1 = xf.mean(dim=(2, 3)).view(b, norm.num_groups, -1).mean(-1)
    m2 = xf.square().mean(dim=(2, 3)).view(b, norm.num_groups, -1).mean(-1)
    rstd = torch.rsqrt((m2 - m1.square()).clamp_min(0.0) + norm.eps)
    per = c // norm.num_groups
    scale = rstd.repeat_interleave(per, dim=1) * norm.weight.to(xf.dtype)
    shift = norm.bias.to(xf.dtype) - m1.repeat_interleave(per, dim=1) * scale
    return (xf * scale[:, :, None, None] + shift[:, :, None, None]).to(dtype)


def conv_by_patch_rows(x: torch.Tensor, conv, dtype: torch.dtype) -> torch.Tensor:
    b, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    frames = F.pad(x.permute(0, 2, 3, 1), (0, 0, pw, pw, ph, ph)).contiguous()
    row = (w + 2 * pw) * c  # one padded image row
    k = kh * kw * c
    rows = frames.as_strided((b, ho, wo, kh, kw * c),
                             ((h + 2 * ph) * row, sh * row, sw * c, row, 1))
    rows = F.pad(rows.reshape(b * ho * wo, k), (0, -k % 8))
    weight = conv.weight.to(dtype).permute(0, 2, 3, 1).reshape(conv.out_channels, k)
    weight = F.pad(weight, (0, -k % 8))
    out = rows @ weight.t() if conv.bias is None else \
        torch.addmm(conv.bias.to(dtype), rows, weight.t())
    return out.reshape(b, ho, wo, conv.out_channels).permute(0, 3, 1, 2)


VARIANTS = {
    "as-is": {},
    "channel-stats-gn": {"group_norm_in": group_norm_by_channel_stats},
    "patch-rows": {"conv_by_columns": conv_by_patch_rows},
    "both": {"group_norm_in": group_norm_by_channel_stats,
             "conv_by_columns": conv_by_patch_rows},
}


# the largest difference from the encoder as it is (``check``) below which a variant is taken
# for the encoder's function: float32 rounding gives 1.6-2.0e-6 on the CPU
TOLERANCE = 1e-4


class VariantError(ValueError):
    """A variant that cannot be used here: the message is the one line to print."""


def adopt(name: str, device: torch.device, tag: str) -> float | None:
    """Variant ``name`` for this process, once ``check`` finds it computing the encoder's
    function on ``device`` (CUDA: the variants change the bf16 path, which runs there only);
    the difference found is printed after ``tag``. Returns it (None for ``as-is``, which
    needs no check); raises ``VariantError`` when the variant cannot be used."""
    if name not in VARIANTS:
        raise VariantError(f"unknown encoder variant {name!r} (have: {', '.join(VARIANTS)})")
    if name == "as-is":
        use(name)
        return None
    if device.type != "cuda":
        raise VariantError(f"encoder variant {name}: the variants change the encoder's bf16 "
                           f"path, which runs on CUDA only (device {device})")
    error = check(name, device)
    if not error < TOLERANCE:
        raise VariantError(f"encoder variant {name} does not compute the encoder's function: "
                           f"largest difference {error:.1e} (float32), limit {TOLERANCE:.0e}")
    use(name)
    print(f"{tag} encoder variant {name}: largest difference from the encoder as it is "
          f"{error:.1e} (float32)", flush=True)
    return error


def use(name: str) -> None:
    """Replace the encoder's functions with variant ``name``'s for this process."""
    for attr, fn in {**AS_IS, **VARIANTS[name]}.items():
        setattr(encoders, attr, fn)


def check(name: str, device: torch.device, frames: int = 8, size: tuple = (96, 96)) -> float:
    """The largest difference between variant ``name`` and the encoder as it is, float32 on
    ``device``, as compiled code runs ``forward_in`` (``torch.compiler.is_compiling`` true):
    of the keypoints relative to the largest keypoint, of each weight gradient relative to
    the largest gradient."""
    torch.manual_seed(0)
    enc = encoders.ImageEncoder(3, [32, 32, 64], 32).to(device)
    images = torch.randint(0, 256, (frames, *size, 3), dtype=torch.uint8, device=device)
    compiling = torch.compiler.is_compiling
    results = []
    try:
        torch.compiler.is_compiling = lambda: True
        for variant in ("as-is", name):
            use(variant)
            enc.zero_grad()
            out = enc.forward_in(images, torch.float32)
            out.square().sum().backward()
            results.append([out.detach()] + [p.grad.clone() for p in enc.parameters()])
    finally:
        torch.compiler.is_compiling = compiling
        use("as-is")
    (out_ref, *grads_ref), (out, *grads) = results
    worst = (out - out_ref).abs().max().item() / max(out_ref.abs().max().item(), 1e-12)
    # the gradients against the largest of them: the bias before the spatial softmax, to which
    # the softmax is blind, has a gradient of rounding noise only
    scale = max(max(g.abs().max().item() for g in grads_ref), 1e-12)
    for ref, got in zip(grads_ref, grads):
        worst = max(worst, (got - ref).abs().max().item() / scale)
    return worst
