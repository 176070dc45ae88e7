"""A policy's ONNX graphs, exported in this process or in a child process of its own.

``torch.onnx.export`` runs its graph passes in C++ holding Python's interpreter lock: a diffusion
policy's unrolled sampler holds it for 0.3-0.6 s at a time, and every other thread of the process
waits, a policy node's control loop included. A checkpoint loaded while the node runs (a reload)
therefore exports in a child (``export_apart``): the parent writes the policy's settings (JSON)
and its weights (safetensors) into a temporary folder, the child rebuilds the policy from them,
exports and writes the graphs there as ONNX files; the parent reads the bytes. Nothing crosses
the process boundary but those files, and the child exports exactly the parent's weights (not
the checkpoint folder again, which a trainer may have replaced since).

The graphs: ``chunk`` (the head: low-dimensional inputs, then each camera's features where the
policy runs split, or each camera's image) and, split, one per camera by its image key.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from ..policies.base import Policy

SETTINGS = "policy.json"
WEIGHTS = "weights.safetensors"
FAILED = 3            # the child's exit status when the exporter itself failed
CHILD_TIMEOUT_S = 900.0


class ExportError(RuntimeError):
    """The exporter failed on this policy (in this process or in the child)."""


def graph_file(name: str, keys: list) -> str:
    """The file of graph ``name`` in the child's folder (image keys may hold any character)."""
    return "chunk.onnx" if name == "chunk" else f"camera-{keys.index(name)}.onnx"


def onnx_bytes(module, input_names: list, inputs: list, output: str) -> bytes:
    """``module`` on ``inputs`` as an ONNX graph (opset 17)."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(inputs), buf, dynamo=False, input_names=input_names,
                          output_names=[output], opset_version=17)
    return buf.getvalue()


def export_onnx(policy: Policy, split: bool = True) -> dict:
    """{"chunk": bytes, image key: bytes (split only)}: the graphs ``OnnxBackend`` runs for
    ``policy``, exported in this process. ``ExportError`` when the exporter fails."""
    from .backends import Backend

    base = Backend(policy.cpu().eval(), split)
    per_camera = "features" if base.split else "image"
    names = ["low"] + [f"{per_camera}_{i}" for i in range(len(base.cfg.image_keys))]

    # In inference, PyTorch runs transformer layers as fused kernels that have no ONNX form: the
    # export traces their plain form (the same arithmetic) instead. The switch is process-wide:
    # while the export runs, other threads' transformers take the plain form.
    fused = torch.backends.mha.get_fastpath_enabled()
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        graphs = {"chunk": onnx_bytes(base.export_module(policy), names, base.inputs(), "chunk")}
        for key, encoder in (base.parts[0].items() if base.split else ()):
            graphs[key] = onnx_bytes(encoder.eval(), ["image"],
                                     [torch.from_numpy(base.images[key])], "features")
    except Exception as exc:  # noqa: BLE001 - any exporter failure means "not this backend"
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {exc}") from None
    finally:
        torch.backends.mha.set_fastpath_enabled(fused)
    return graphs


def export_apart(policy: Policy, split: bool = True, timeout: float = CHILD_TIMEOUT_S) -> dict:
    """``export_onnx(policy, split)`` run in a child process (this process's interpreter lock
    stays free). ``ExportError`` when the exporter fails there; ``RuntimeError`` when the child
    could not do its work (it died, timed out, or does not know the policy's family)."""
    from safetensors.torch import save_file

    keys = list(policy.cfg.image_keys)
    with tempfile.TemporaryDirectory(prefix="robot_imitation-export-") as tmp:
        folder = Path(tmp)
        (folder / SETTINGS).write_text(json.dumps(
            {"type": policy.type_name, "policy": policy.cfg.to_dict(), "split": bool(split),
             "parent": os.getpid()}), encoding="utf-8")
        save_file({k: v.detach().to("cpu").contiguous() for k, v in policy.state_dict().items()},
                  str(folder / WEIGHTS))
        # the child imports this package from where this process did (a path added at run
        # time included)
        home = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [home, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]))
        try:
            done = subprocess.run([sys.executable, "-m", __name__, str(folder)], env=env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"the ONNX export in a child process took over {timeout:.0f} s"
                               ) from None
        said = done.stderr.decode(errors="replace").strip().splitlines()
        last = said[-1] if said else f"exit status {done.returncode}"
        if done.returncode == FAILED:
            raise ExportError(last)
        if done.returncode != 0:
            raise RuntimeError(f"the ONNX export in a child process failed: {last}")
        graphs = {}
        for name in ["chunk", *keys]:
            path = folder / graph_file(name, keys)
            if path.is_file():
                graphs[name] = path.read_bytes()
        if "chunk" not in graphs:
            raise RuntimeError("the ONNX export in a child process wrote no graph")
        return graphs


def _die_with_parent(parent: int) -> None:
    """Ask the kernel to end this process when its parent ends (Linux): no export left running
    for a node that is gone."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:   # the parent ended before the request
        os._exit(1)


def main(argv: list | None = None) -> int:
    from safetensors.torch import load_file

    from ..learning.checkpoint import CheckpointError, rebuild_policy

    folder = Path((argv if argv is not None else sys.argv[1:])[0])
    settings = json.loads((folder / SETTINGS).read_text(encoding="utf-8"))
    _die_with_parent(int(settings["parent"]))
    try:
        os.nice(10)   # the control loop of the parent comes first
    except OSError:
        pass
    torch.set_num_threads(1)
    try:
        policy = rebuild_policy(settings, "the policy")
    except CheckpointError as exc:   # a family the running program registered itself
        print(exc, file=sys.stderr)
        return 1
    policy.load_state_dict(load_file(str(folder / WEIGHTS)))
    try:
        graphs = export_onnx(policy.eval(), settings["split"])
    except ExportError as exc:
        print(exc, file=sys.stderr)
        return FAILED
    keys = list(policy.cfg.image_keys)
    for name, data in graphs.items():
        (folder / graph_file(name, keys)).write_bytes(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
