"""A reload's ONNX export runs in a child process (``deploy.export``), not in the process whose
control loop is running: ``torch.onnx.export`` holds Python's interpreter lock in its graph
passes (a diffusion policy's 0.2-0.6 s at a time: every tick of the node waited). The graphs
the child writes must be the ones this process would have exported: the same actions, to the
bit, on the same inputs."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from robot_imitation.deploy.backends import fill_example, select_backend
from robot_imitation.deploy.runtime import load_policy, reload_backend
from robot_imitation.learning.checkpoint import save_checkpoint
from robot_imitation.learning.trainer import TrainConfig
from robot_imitation.policies import make_policy
from robot_imitation.policies.registry import register_policy, unregister_policy
from robot_imitation.spec import Spec

PLUGINS = Path(__file__).resolve().parent / "plugins"


@pytest.fixture
def exports(monkeypatch):
    """The ONNX exports run in this process (the real exporter, counted)."""
    calls = []
    export = torch.onnx.export

    def counted(*args, **kwargs):
        calls.append(type(args[0]).__name__)
        return export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", counted)
    return calls


def same_actions(a, b, policy) -> None:
    """Both backends' chunk on the same inputs: identical."""
    fill_example(a, policy, seed=3)
    fill_example(b, policy, seed=3)
    np.testing.assert_array_equal(a.run(), b.run())


@pytest.mark.parametrize("family,spec_name,settings", [
    ("diffusion", "reach", {"chunk": 8}),
    ("mlp", "push_image", {"chunk": 1, "policy_config": {"image_channels": [8, 16],
                                                         "keypoints": 8}}),
])
def test_a_reload_exports_in_a_child_process(tmp_path, exports, family, spec_name, settings):
    """Diffusion's unrolled sampler, and a policy with a camera run split (the head and the
    camera's encoder, two graphs): loaded ``apart`` (as the policy node's reload does), no
    export runs in this process; the backend agrees with eager PyTorch (``select_backend``
    checks it) and gives the very actions of the one exported here."""
    spec = Spec.load(spec_name)
    torch.manual_seed(0)
    policy = make_policy(spec, TrainConfig(policy=family, task=spec_name, **settings))
    path = save_checkpoint(tmp_path / "ckpt", policy.eval(), spec)

    apart = load_policy(path, spec, "onnxruntime", apart=True)
    assert exports == [], f"exported in this process: {exports}"
    assert apart.backend.kind == "onnxruntime"
    assert apart.backend.note == "exported in a child process"
    assert apart.backend.split == bool(policy.cfg.image_keys)

    here = load_policy(path, spec, "onnxruntime")
    assert len(exports) == 1 + len(policy.cfg.image_keys)   # the head, and each camera's encoder
    assert here.backend.note == "exported in this process"
    same_actions(apart.backend, here.backend, policy)
    assert not list(tmp_path.glob("robot_imitation-export-*"))


def test_a_family_the_child_does_not_know_is_exported_here(exports):
    """A family registered by the running program alone (no entry point): a child process
    cannot rebuild it; the export runs here, and the backend says why."""
    sys.path.insert(0, str(PLUGINS))
    try:
        from tiny_policy import TinyPolicy

        register_policy("tiny", TinyPolicy)
        spec = Spec.load("reach")
        torch.manual_seed(0)
        policy = make_policy(spec, TrainConfig(policy="tiny", task="reach")).eval()
        backend, _ = select_backend(policy, "onnxruntime", apart=True)
    finally:
        unregister_policy("tiny")
        sys.path.remove(str(PLUGINS))
    assert len(exports) == 1
    assert backend.note.startswith("exported in this process (the ONNX export in a child "
                                   "process failed: "), backend.note
    assert "failed: the policy: unknown policy type 'tiny'" in backend.note, backend.note


def test_a_load_beside_a_control_loop_traces_no_torchscript_unless_asked(tmp_path, monkeypatch):
    """``auto`` beside a running control loop (``apart``: a reload that chooses its backend
    anew): TorchScript's trace runs in this process, holding the interpreter lock (the default
    diffusion policy's: 243 ms without a tick); it is not tried, and its row says why. Asked
    for by name, it is traced."""
    traces = []
    trace = torch.jit.trace

    def traced(*args, **kwargs):
        traces.append(1)
        return trace(*args, **kwargs)

    monkeypatch.setattr(torch.jit, "trace", traced)
    spec = Spec.load("reach")
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "mlp", make_policy(
        spec, TrainConfig(policy="mlp", task="reach")).eval(), spec)
    here = load_policy(path, spec, "auto")
    assert len(traces) == 1
    assert any(r["backend"] == "torchscript" and "median_us" in r for r in here.backends)
    apart = load_policy(path, spec, "auto", apart=True)
    assert len(traces) == 1, "a load apart traced TorchScript"
    row = next(r for r in apart.backends if r["backend"] == "torchscript")
    assert "not tried beside a running control loop" in row["error"], row
    assert apart.backend.kind != "torchscript"
    named = load_policy(path, spec, "torchscript", apart=True)
    assert named.backend.kind == "torchscript" and len(traces) == 2
    # the policy node's reload: a running TorchScript is chosen anew (a retry of the running
    # kind would trace beside the loop); the running kind first otherwise, or the one asked for
    assert reload_backend("auto", "torchscript") == ("auto", False)
    assert reload_backend("auto", "onnxruntime") == ("onnxruntime", True)
    assert reload_backend("torchscript", "torchscript") == ("torchscript", False)
    assert reload_backend("numpy", "numpy") == ("numpy", False)
