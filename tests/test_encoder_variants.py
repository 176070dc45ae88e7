"""The camera encoder's alternative layers that the GPU benchmarks time (bench/encoder_variants.py):
each must compute the encoder's function, keypoints and weight gradients, before a GPU session
spends its time on them; and a variant is refused where it would change nothing (off CUDA)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))  # last: shadows nothing
import encoder_variants  # noqa: E402 (a benchmark's module, not part of the package)

from robot_imitation.policies import encoders  # noqa: E402


@pytest.mark.parametrize("name", ["channel-stats-gn", "patch-rows", "both"])
def test_each_variant_computes_the_encoders_function(name):
    # float32 rounding gives 1-2e-6 here; a variant that computes something else is off by
    # the size of the keypoints or the gradients themselves
    assert encoder_variants.check(name, torch.device("cpu")) < 1e-5
    # the check leaves the encoder as it is
    assert encoders.group_norm_in is encoder_variants.AS_IS["group_norm_in"]
    assert encoders.conv_by_columns is encoder_variants.AS_IS["conv_by_columns"]


def test_a_changed_layer_is_caught(monkeypatch):
    # the check must see a variant that is off: group norms over one group instead of eight
    def one_group(x, norm, dtype):
        return torch.nn.functional.group_norm(x, 1, norm.weight.to(dtype), norm.bias.to(dtype),
                                              norm.eps)

    monkeypatch.setitem(encoder_variants.VARIANTS, "one-group", {"group_norm_in": one_group})
    # (adopt refuses a variant at or above the tolerance)
    assert encoder_variants.check("one-group", torch.device("cpu")) > encoder_variants.TOLERANCE


def test_a_variant_is_refused_off_cuda_and_as_is_needs_no_check(capsys):
    with pytest.raises(encoder_variants.VariantError, match="CUDA only"):
        encoder_variants.adopt("both", torch.device("cpu"), "[test]")
    with pytest.raises(encoder_variants.VariantError, match="unknown encoder variant 'nope'"):
        encoder_variants.adopt("nope", torch.device("cpu"), "[test]")
    assert encoder_variants.adopt("as-is", torch.device("cpu"), "[test]") is None
    assert encoders.group_norm_in is encoder_variants.AS_IS["group_norm_in"]
    assert capsys.readouterr().out == ""
