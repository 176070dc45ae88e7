"""Checkpoints: a folder with ``model.safetensors`` and ``policy.json``, never a pickle.

``policy.json`` holds the policy's type (its family in ``robot_imitation.policies``; a
checkpoint written before types were stored is an ``mlp``) and architecture, the
observation/action spec with its fingerprint, the
normalization statistics, the training configuration, the dataset fingerprint and the library
versions. Saving writes a temporary folder and renames it into place, so a reader never sees a
half-written checkpoint. Loading validates the files and, given the runtime spec, refuses a
checkpoint trained on another one, naming what differs.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import struct
import time
from pathlib import Path

import torch

from ..paths import pid_running
from ..policies.base import Policy
from ..spec import Spec

FORMAT = "robot_imitation.policy"
VERSION = 1
WEIGHTS = "model.safetensors"
META = "policy.json"
DEFAULT_TYPE = "mlp"  # the type of a checkpoint that does not say (written before types)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (names the file and what is wrong)."""


def _versions() -> dict:
    import numpy
    import safetensors

    from .. import __version__

    return {"robot_imitation": __version__, "torch": torch.__version__,
            "numpy": numpy.__version__, "safetensors": safetensors.__version__,
            "python": platform.python_version()}


def save_checkpoint(path, policy: Policy, spec: Spec, stats: dict | None = None,
                    train_config: dict | None = None, dataset_fingerprint: str | None = None,
                    extra: dict | None = None) -> Path:
    """Write the checkpoint folder ``path`` atomically (replacing an older one).

    The files are written into a temporary folder, flushed to the disk (the weights, the
    metadata and the folder), then swapped with ``path`` in one rename (``renameat2``
    ``RENAME_EXCHANGE``): ``path`` names a whole checkpoint at every moment, the earlier one
    or the new one. Where the swap is not available, two renames with SIGINT and SIGTERM held
    between them; a process killed there leaves the earlier checkpoint as
    ``.<name>.old-<pid>``, which the next save or load of ``path`` puts back
    (``restore_checkpoint``). A write that fails (a full disk) removes the temporary folder
    and raises ``CheckpointError`` naming the file; the earlier checkpoint stays."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in policy.state_dict().items()}
    bad = next((k for k, v in tensors.items()
                if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:  # every load refuses it: never written, never named a checkpoint
        raise CheckpointError(f"{path}: not saved: {bad} holds NaN or infinite values")
    path.parent.mkdir(parents=True, exist_ok=True)
    restore_checkpoint(path)  # a save killed between its renames: the earlier one back
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    current = tmp
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        current = tmp / WEIGHTS
        save_file(tensors, str(current))
        _fsync(current)
        current = tmp / META
        meta = {"format": FORMAT, "version": VERSION,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "weights_sha256": hashlib.sha256((tmp / WEIGHTS).read_bytes()).hexdigest(),
                "type": policy.type_name, "policy": policy.cfg.to_dict(),
                "policy_sha256": policy_digest(policy.type_name, policy.cfg.to_dict()),
                "spec": spec.to_dict(),
                "spec_fingerprint": spec.fingerprint(), "normalization": stats or {},
                "training": train_config or {}, "dataset_fingerprint": dataset_fingerprint,
                "versions": _versions(), **(extra or {})}
        with open(current, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        current = tmp
        _fsync(tmp)
    except BaseException as exc:  # a full disk, Ctrl-C: no partial folder left behind
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, (OSError, SafetensorError)):
            kept = "; the earlier checkpoint there is kept" if path.is_dir() else ""
            what = path / current.name if current != tmp else path
            raise CheckpointError(f"{path}: not saved: cannot write {what}: "
                                  f"{_reason(exc)}{kept}") from None
        raise
    try:
        _swap_into_place(tmp, path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"{path}: not saved: cannot move {tmp} into place: "
                              f"{_reason(exc)}") from None
    return path


def _reason(exc: BaseException) -> str:
    """What went wrong in an OSError or a SafetensorError, without the file (named by the
    caller): "No space left on device"."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    text = re.sub(r"^Error while serializing: (I/O error: )?", "", text)
    return re.sub(r" \(os error \d+\)$", "", text) or type(exc).__name__


def _fsync(path: Path) -> None:
    """``path`` (a file or a folder) flushed to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


_RENAME_EXCHANGE = 2  # renameat2's flag: swap the two names in one step
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` in one step (Linux ``renameat2`` ``RENAME_EXCHANGE``);
    False where the system or the file system does not offer it."""
    import ctypes
    import errno

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                   ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)),
          _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def _signals_held():
    """SIGINT and SIGTERM held in the main thread: their Python handlers (which run in the main
    thread only) deferred, and the signals raised again when the block ends. Blocking them in
    the main thread (``pthread_sigmask``) was not enough: the kernel hands a signal sent to the
    process to any thread that does not block it (torch's), and Python then runs the handler
    in the main thread at once. A handler set outside Python is left as it is."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield  # (a signal's Python handler runs in the main thread only)
        return
    caught: list = []

    def defer(signum, frame):
        caught.append(signum)

    before = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if handler is not None and handler is not signal.SIG_IGN:
            before[sig] = handler
            signal.signal(sig, defer)
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(caught):
            signal.raise_signal(sig)


def _swap_into_place(tmp: Path, path: Path) -> None:
    if not (path.exists() or path.is_symlink()):
        tmp.rename(path)
        _fsync(path.parent)
        return
    if _exchange(tmp, path):  # path: the new checkpoint; tmp: the earlier one
        _fsync(path.parent)
        _remove(tmp)
        return
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if old.exists():
        _remove(old)
    with _signals_held():
        path.rename(old)
        try:
            tmp.rename(path)
        except BaseException:
            old.rename(path)
            raise
        _fsync(path.parent)
    _remove(old)


def restore_checkpoint(path) -> bool:
    """What a save of ``path`` killed between its two renames left (see ``save_checkpoint``)
    set right: the earlier checkpoint, left as ``.<name>.old-<pid>``, renamed back to
    ``path`` when ``path`` is missing, and the leftovers of dead processes' saves removed.
    True when a checkpoint was put back."""
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        return False
    restored = False
    pattern = re.compile(re.escape(f".{path.name}.") + r"(old|tmp)-(\d+)")
    leftovers = []
    try:
        names = list(parent.iterdir())
    except OSError:
        return False
    for child in names:
        m = pattern.fullmatch(child.name)
        if m and not pid_running(int(m.group(2))):
            leftovers.append((m.group(1), child))
    olds = sorted((c for kind, c in leftovers if kind == "old" and (c / META).is_file()),
                  key=lambda c: c.stat().st_mtime, reverse=True)
    if olds and not (path.exists() or path.is_symlink()):
        try:
            olds[0].rename(path)
            _fsync(parent)
            restored = True
        except OSError:
            return False
    for _, child in leftovers:
        if child.exists() and child != path:
            try:
                _remove(child)
            except OSError:
                pass
    return restored


def policy_digest(type_name: str, config: dict) -> str:
    """The checksum of a checkpoint's policy type and settings (its ``policy_sha256``): an
    edit that keeps every tensor's shape (attention heads, a diffusion schedule) changes what
    the weights compute."""
    text = json.dumps({"type": type_name, "policy": config}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _check_safetensors(file: Path) -> None:
    """Refuse anything that is not a safetensors file (a pickle in particular)."""
    with open(file, "rb") as f:
        head = f.read(16)
    if len(head) >= 9 and head[8:9] == b"{":
        # safetensors: an 8-byte little-endian header length, then the JSON header. The
        # length's low bytes may be anything (0x80, "PK"): only the header tells.
        (n,) = struct.unpack("<Q", head[:8])
        if n > file.stat().st_size:
            raise CheckpointError(f"{file} is not a safetensors file (bad header)")
        return
    if head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"):
        raise CheckpointError(f"{file} is a pickle (torch.save) file, not safetensors; "
                              "robot_imitation never unpickles weights: re-export them with "
                              "safetensors")
    if len(head) < 9:
        raise CheckpointError(f"{file} is truncated ({len(head)} bytes)")
    raise CheckpointError(f"{file} is not a safetensors file (bad header)")


def read_metadata(path) -> dict:
    path = Path(path)
    meta_file = path / META
    if not path.is_dir() and not path.exists():
        restore_checkpoint(path)  # a save killed between its renames left it hidden
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint folder")
    if not meta_file.is_file():
        raise CheckpointError(f"{path}: no {META}")
    try:
        meta = json.loads(meta_file.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{meta_file} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_file}: not a {FORMAT} checkpoint")
    version = meta.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise CheckpointError(f"{meta_file}: version must be a whole number, got {version!r}")
    for key in ("spec", "policy"):  # every load reads them
        if not isinstance(meta.get(key), dict):
            raise CheckpointError(f"{meta_file}: {key} must be a mapping, got "
                                  f"{meta.get(key, 'nothing')!r:.60}")
    if meta.get("version", 0) > VERSION:
        raise CheckpointError(f"{meta_file}: version {meta['version']} is newer than this "
                              f"library reads ({VERSION})")
    return meta


def spec_mismatch(trained: Spec, runtime: Spec) -> list[str]:
    """What differs between the spec a policy was trained on and the one it runs with."""
    problems = []
    if trained.control_rate != runtime.control_rate:
        problems.append(f"control rate {trained.control_rate} Hz vs {runtime.control_rate} Hz")
    fields = ("topic", "type", "field", "joints", "size", "image")
    attrs = {"observations": fields, "actions": fields, "features": ("op", "inputs", "size")}
    for kind in ("observations", "actions", "features"):
        a = {f.key: f for f in getattr(trained, kind)}
        b = {f.key: f for f in getattr(runtime, kind)}
        for key in a.keys() - b.keys():
            problems.append(f"{kind[:-1]} '{key}' is missing at runtime")
        for key in b.keys() - a.keys():
            problems.append(f"{kind[:-1]} '{key}' was not in training")
        for key in a.keys() & b.keys():
            fa, fb = a[key], b[key]
            for attr in attrs[kind]:
                if getattr(fa, attr) != getattr(fb, attr):
                    problems.append(f"{kind[:-1]} '{key}': {attr} {getattr(fa, attr)!r} in "
                                    f"training, {getattr(fb, attr)!r} at runtime")
        if [f.key for f in getattr(trained, kind)] != [f.key for f in getattr(runtime, kind)] \
                and not problems:
            problems.append(f"{kind} in another order")
    return problems


def policy_type(meta: dict) -> str:
    """The policy type a checkpoint's metadata names (``mlp`` when it names none)."""
    return meta.get("type", DEFAULT_TYPE)


def rebuild_policy(meta: dict, where) -> Policy:
    """The policy (untrained weights) that ``policy.json``'s ``type`` and ``policy`` describe,
    built by its family in the registry; ``CheckpointError`` naming ``where`` otherwise."""
    from ..policies.registry import UnknownPolicyError, policy_class

    kind = policy_type(meta)
    if not isinstance(kind, str):
        raise CheckpointError(f"{where}: type must be a policy type name, got {kind!r}")
    try:
        family = policy_class(kind)
    except UnknownPolicyError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    try:
        return family.from_config(meta["policy"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{where}: cannot rebuild the {kind} policy: {exc}") from None


def _check_layout(settings: dict, trained: Spec, where) -> None:
    """``CheckpointError`` unless the policy's inputs and outputs in ``policy.json`` (its
    ``LAYOUT`` fields) are the ones its spec gives: keys swapped by hand fed one observation
    in for another without a word, and other edits failed inside the model."""
    from ..policies.config import LAYOUT, input_layout

    chunk = settings.get("chunk")
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise CheckpointError(f"{where}: policy chunk must be a positive whole number, got "
                              f"{chunk!r}")
    expected = json.loads(json.dumps(input_layout(trained, chunk)))
    for key in LAYOUT:
        if settings.get(key) != expected[key]:
            raise CheckpointError(f"{where}: policy {key} {settings.get(key)!r:.80} is not what "
                                  f"its spec gives ({expected[key]!r:.80}; edited by hand?)")


def load_checkpoint(path, runtime_spec: Spec | None = None, device="cpu"):
    """(policy in eval mode, metadata). Validates files, weights and (given) the runtime spec."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    meta = read_metadata(path)
    weights = path / WEIGHTS
    if not weights.is_file():
        pickles = [p.name for p in path.iterdir() if p.suffix in (".pt", ".pth", ".pkl", ".bin")]
        raise CheckpointError(f"{path}: no {WEIGHTS}" + (
            f" (found {pickles}: pickled weights are never loaded)" if pickles else ""))
    _check_safetensors(weights)
    trained = Spec.from_dict(meta["spec"], where=f"{path / META} spec")
    if trained.fingerprint() != meta.get("spec_fingerprint"):
        raise CheckpointError(f"{path / META}: the stored spec does not match its fingerprint "
                              "(edited by hand?)")
    if runtime_spec is not None:
        problems = spec_mismatch(trained, runtime_spec)
        if problems:
            raise CheckpointError(f"{path} was trained for spec '{trained.name}', which does not "
                                  f"match the runtime spec '{runtime_spec.name}': "
                                  + "; ".join(problems))
    _check_layout(meta["policy"], trained, path / META)
    policy = rebuild_policy(meta, path / META)
    if meta.get("action_limits") is not None:
        from ..deploy.limits import ActionLimits, LimitsError

        try:
            ActionLimits.from_dict(meta["action_limits"], trained.action_dim,
                                   f"{path / META} action_limits")
        except LimitsError as exc:
            raise CheckpointError(str(exc)) from None
    try:
        data = weights.read_bytes()
        state = load(data)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights} is damaged: {exc}") from None
    digest = meta.get("weights_sha256")
    if digest is not None:  # (checkpoints written before it was stored have none)
        if not isinstance(digest, str):
            raise CheckpointError(f"{path / META}: weights_sha256 must be a string, got "
                                  f"{digest!r:.60}")
        if hashlib.sha256(data).hexdigest() != digest:
            raise CheckpointError(f"{weights} does not match the checksum its {META} keeps "
                                  "(weights_sha256): damaged or replaced since it was written")
    missing = policy.state_dict().keys() - state.keys()
    unexpected = state.keys() - policy.state_dict().keys()
    if missing or unexpected:
        raise CheckpointError(f"{weights}: weights do not fit the architecture in {META} "
                              f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    for name, tensor in policy.state_dict().items():
        if state[name].shape != tensor.shape:
            raise CheckpointError(f"{weights}: {name} has shape {tuple(state[name].shape)}, the "
                                  f"architecture needs {tuple(tensor.shape)}")
        if not torch.isfinite(state[name]).all():
            raise CheckpointError(f"{weights}: {name} holds NaN or infinite values")
    digest = meta.get("policy_sha256")
    if digest is not None:  # (checkpoints written before it was stored have none)
        if digest != policy_digest(meta.get("type"), meta["policy"]):
            raise CheckpointError(f"{path / META}: its type and policy settings do not match the "
                                  "checksum it keeps (policy_sha256): edited since it was "
                                  "written? (the weights were trained with the settings as "
                                  "they were)")
    policy.load_state_dict(state)
    return policy.to(device).eval(), meta
