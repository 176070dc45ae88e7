"""Behavior Cloning training: a dataset of recorded episodes in, checkpoints out.

- The device is CUDA when available, else the CPU (``device`` overrides); bf16 autocast on the
  GPU. The training arrays sit whole on the device (images as uint8) and batches are sampled
  there: no Python data-loader loop. Images get a random shift on the device. On one GPU the
  whole step is replayed as CUDA graphs (``learning.step.TrainStep``, ``cuda_graph``).
- Seeds; validation split by episode (from the dataset builder); the best checkpoint by
  validation loss; with a built-in task, periodic closed-loop evaluation in its gymnasium
  version and the best checkpoint by success rate; early stopping.
- Logs: a progress callback, TensorBoard scalars, a CSV and a PNG of the loss curves.
- Multi-GPU / multi-node through ``torchrun`` (DistributedDataParallel): every rank draws the
  same global batch and trains on its slice, so the averaged gradient equals a single process's
  on the whole batch. Only rank 0 evaluates and writes.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib
import json
import math
import os
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..deploy.limits import training_limits
from ..policies import input_layout, policy_class
from ..policies.base import Batch, Policy, PolicyError, constant_inputs, statistics_record
from ..settings import SettingError, name_prefixes
from ..spec import Spec
from .checkpoint import save_checkpoint
from .config import DEVICE_LIMITS, SEED_LIMITS, TrainConfig  # noqa: F401 (re-exported)
from .step import EmaWeights, PolicyLoss, TrainStep, split_loss  # noqa: F401 (re-exported)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda asked for, but no CUDA device is available")
    return device


class DeviceData:
    """One split's arrays on the device, with on-device batch sampling (action chunks).

    The low-dimensional observations, each sample's action chunk and its mask sit side by
    side in one float32 table, so that drawing a batch is one gather (and one per camera),
    not one per field: on a GPU a small policy's batch costs kernel launches, not bytes.
    ``obs``, ``chunk_index`` and ``chunk_mask`` stay readable as before (``obs`` of the
    low-dimensional keys are views into the table)."""

    def __init__(self, arrays: dict, spec: Spec, chunk: int, device: torch.device):
        self.spec = spec
        self.actions = torch.as_tensor(arrays["actions"].astype(np.float32), device=device)
        self.n = n = len(self.actions)
        episode = torch.as_tensor(arrays["episode"], device=device)
        # chunk targets: the next `chunk` actions of the same episode (masked past its end)
        offsets = torch.arange(chunk, device=device)
        idx = (torch.arange(n, device=device)[:, None] + offsets).clamp(max=n - 1)
        same = episode[idx] == episode[:, None]
        last = torch.where(same, idx, torch.zeros_like(idx)).amax(1, keepdim=True)
        self.chunk_index = torch.where(same, idx, last)
        low = [f for f in spec.observations if not f.is_image]
        widths = [int(np.prod(f.shape)) for f in low]
        action_dim = self.actions.shape[1]
        self.table = torch.cat(
            [torch.as_tensor(np.asarray(arrays["obs"][f.key], dtype=np.float32)
                             .reshape(n, -1), device=device) for f in low]
            + [self.actions[self.chunk_index].reshape(n, -1), same.float()], dim=1) \
            if n else torch.zeros(0, sum(widths) + chunk * (action_dim + 1), device=device)
        self._fields, start = [], 0  # (key, first column, width, shape) in the table
        for f, width in zip(low, widths):
            self._fields.append((f.key, start, width, tuple(f.shape)))
            start += width
        self._columns = {field[0]: field for field in self._fields}
        self._chunk = (start, chunk, action_dim)
        self.obs = {}
        for f in spec.observations:
            if f.is_image:
                self.obs[f.key] = torch.as_tensor(arrays["obs"][f.key], device=device)
        for key, first, width, shape in self._fields:
            self.obs[key] = self.table[:, first:first + width].reshape(n, *shape)
        self.chunk_mask = self.table[:, start + chunk * action_dim:]
        self.device = device

    def batch(self, index: torch.Tensor, shift: int = 0):
        rows = self.table[index]
        b = rows.shape[0]
        obs = {}
        for f in self.spec.observations:  # the spec's order
            if f.is_image:
                frames = self.obs[f.key]
                obs[f.key] = shifted_frames(frames, index, shift) if shift else frames[index]
            else:
                _, first, width, shape = self._columns[f.key]
                obs[f.key] = rows[:, first:first + width].reshape(b, *shape)
        start, chunk, action_dim = self._chunk
        actions = rows[:, start:start + chunk * action_dim].reshape(b, chunk, action_dim)
        return obs, actions, rows[:, start + chunk * action_dim:]


def random_shift(images: torch.Tensor, pad: int) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (replicate padding), per image, on device."""
    return shifted_frames(images, None, pad)


def shifted_frames(frames: torch.Tensor, index, pad: int) -> torch.Tensor:
    """``frames[index]`` (all of them where ``index`` is None), each moved by its own random
    offset of up to ``pad`` pixels across and down, the edge pixels repeated (replicate
    padding): (B, H, W, C) in the frames' dtype, taken in one gather from the frames as they
    are stored (uint8): a padded pixel is the edge pixel its clamped index names. (Before: the
    batch gathered, made float32, padded, gathered again and made uint8 again, five passes.)
    The offsets are drawn across, then down, from the device's default generator."""
    n, h, w, _ = frames.shape
    device = frames.device
    b = n if index is None else index.shape[0]
    dx = torch.randint(0, 2 * pad + 1, (b,), device=device)
    dy = torch.randint(0, 2 * pad + 1, (b,), device=device)
    rows = (torch.arange(h, device=device)[None] + dy[:, None] - pad).clamp_(0, h - 1)
    cols = (torch.arange(w, device=device)[None] + dx[:, None] - pad).clamp_(0, w - 1)
    which = torch.arange(b, device=device) if index is None else index
    return frames[which[:, None, None], rows[:, :, None], cols[:, None, :]]


def policy_config(spec: Spec, cfg: TrainConfig):
    """The config of the policy ``cfg`` trains for ``spec`` (its family's config class)."""
    return policy_class(cfg.policy).make_config(spec, cfg)


def relative_action_stats(relative: list, arrays: dict, chunk: int = 1):
    """Statistics of the actions as a policy predicts them: relative where declared
    (``relative``: [action offset, size, observation key], as ``PolicyConfig.relative``), over
    every step of its chunks: the action k steps ahead (same episode) measured from the
    observation the chunk is predicted at. (A chunk's later actions lie further from the
    measured joints than the next one does: statistics of the next step alone would put them
    outside the normalized range a sampler clips to.)"""
    from ..data.dataset import FieldStats

    actions, episode = arrays["actions"], np.asarray(arrays["episode"])
    parts = []
    for k in range(min(chunk, len(episode))):
        same = np.flatnonzero(episode[k:] == episode[:len(episode) - k])
        part = actions[same + k].copy()
        for offset, size, key in relative:
            part[:, offset:offset + size] -= arrays["obs"][key][same, :size]
        parts.append(part)
    return FieldStats.of(np.concatenate(parts))


def dataset_fingerprint(dataset) -> str:
    h = hashlib.sha256(dataset.spec.fingerprint().encode())
    for ep in dataset.episodes:
        h.update(f"{ep.name}:{len(ep)}:{float(np.sum(ep.actions)):.9g}".encode())
    return h.hexdigest()[:16]


def _infer_task(dataset) -> str | None:
    from ..sim.tasks import available_tasks

    tasks = {getattr(ep, "task", None) for ep in dataset.episodes} - {None}
    if len(tasks) == 1:
        name = tasks.pop()
        return name if name in available_tasks() else None
    # the spec's task: the longest part of its name that is a task (push_image: push)
    return next((n for n in name_prefixes(dataset.spec.name) if n in available_tasks()), None)


def check_actions_shape(policy: Policy, data: DeviceData, device) -> None:
    """``act`` on one training sample must give (1, chunk, action_dim): a family returning
    another shape is named before any step (not by a broadcast error at evaluation)."""
    policy.eval()
    # the random state as it was (a sampling policy draws noise): a run trains as before
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            torch.no_grad():
        out = policy.act(data.batch(torch.arange(1, device=device))[0])
    policy.reset()
    policy.train()
    want = (1, policy.cfg.chunk, policy.cfg.action_dim)
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != want:
        raise PolicyError(f"policy type {policy.type_name!r}: act() returns {got} for one "
                          f"observation, not (batch, chunk, action_dim) = {want}")


#: what a training run writes into its folder: ``overwrite`` clears a folder of these only
RUN_ENTRIES = ("best_val", "best_success", "last", "log.csv", "loss.png", "result.json",
               "tensorboard")
#: a checkpoint save's temporary names (``checkpoint.save_checkpoint``)
_SAVE_LEFTOVER = re.compile(r"\.(best_val|best_success|last)\.(old|tmp)-\d+")


def check_run_folder(out, overwrite: bool = False, inputs=()) -> Path:
    """``out`` checked to take a training run, nothing changed: a folder holding files is
    refused unless ``overwrite``; with it, one holding anything a training run does not write,
    the current folder or one of ``inputs`` (the dataset, a warm start's checkpoint) is
    refused too (``RunFolderError`` naming the folder): an overwrite clears the earlier run
    whole (``clear_run_folder``), never another folder."""
    from ..paths import RunFolderError, check_out

    out = Path(out)
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise RunFolderError(f"{out} exists and is not empty: an earlier run's checkpoints "
                                 "would be replaced (choose another --out, or --overwrite)")
        others = sorted(c.name for c in out.iterdir() if c.name not in RUN_ENTRIES
                        and not _SAVE_LEFTOVER.fullmatch(c.name))
        if others:
            raise RunFolderError(
                f"{out} is not a training run's folder (it holds {', '.join(others[:3])}"
                + (f" and {len(others) - 3} more" if len(others) > 3 else "")
                + "): not cleared (choose another --out)")
    return check_out(out, overwrite, inputs, "(choose another --out, or --overwrite)")


def clear_run_folder(out, inputs=()) -> Path:
    """The earlier training run in ``out`` removed whole (``check_run_folder`` first)."""
    from ..paths import prepare_out

    check_run_folder(out, True, inputs)
    return prepare_out(out, True, inputs, "(choose another --out)")


def available_memory(device) -> int | None:
    """Bytes of memory free for a run on ``device`` (None where it cannot be told)."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, RuntimeError, ValueError):
        pass
    return None


def size_settings(cfg: TrainConfig) -> str:
    """The settings a policy's size comes from, as a user gave them."""
    parts = [f"policy {cfg.policy}"]
    if cfg.policy == "mlp":
        parts.append(f"hidden {','.join(map(str, cfg.hidden))}")
    parts += [f"{k}={v}" for k, v in sorted(cfg.policy_config.items())]
    parts.append(f"chunk {cfg.chunk}")
    return ", ".join(parts)


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB"


def _training_bytes(model: torch.nn.Module, ema: bool) -> int:
    """The memory a model's training holds: weights, gradients, AdamW's two moments (and the
    moving average's copy)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return weights * (5 if ema else 4) + buffers


def _per_sample_bytes(policy: Policy, data: "DeviceData", device) -> float:
    """The memory one more sample of a batch holds while its step runs: the tensors the
    policy's loss keeps for the backward pass, counted at two small batch sizes (what does not
    grow with the batch, the weights, cancels), plus the batch itself."""
    counts = []
    sizes = (4, 8)
    for b in sizes:
        seen, total = set(), [0]

        def pack(t, seen=seen, total=total):
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total[0] += storage.nbytes()
            return t

        # the random state as it was (dropout, a diffusion's noise): a run trains as before
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            index = torch.arange(b, device=device) % max(data.n, 1)
            obs, actions, mask = data.batch(index)
            loss, _ = split_loss(policy.loss(Batch(obs, actions, mask)), policy)
            batch = sum(v.numel() * v.element_size() for v in obs.values()) \
                + actions.numel() * actions.element_size() + mask.numel() * mask.element_size()
            counts.append(total[0] + batch)
            del loss
    policy.zero_grad(set_to_none=True)
    return max(counts[1] - counts[0], 0) / (sizes[1] - sizes[0])


def _is_allocation_error(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", ())
    return isinstance(exc, oom) or (isinstance(exc, RuntimeError) and any(
        word in str(exc) for word in ("alloc", "out of memory", "Out of memory")))


class TrainingStopped(Exception):
    """A run that its caller asked to stop (``Trainer``'s ``stop``): at a progress report, or
    during a closed-loop evaluation (left unfinished, counting for nothing)."""


class Trainer:
    def __init__(self, dataset, out_dir, cfg: TrainConfig, log=print, progress=None,
                 overwrite: bool = False, inputs=(), stop=None):
        """``overwrite``: an earlier run in ``out_dir`` is removed whole before this run
        writes its first file (``clear_run_folder``; never a folder of other files or one
        holding ``inputs``). ``stop``: a function saying whether the caller wants the run to
        end, asked at each progress report (every ``log_every`` steps; not under DDP) and
        between a closed-loop evaluation's episodes (``TrainingStopped``); ``progress`` may
        also raise to end the run."""
        self.dataset, self.out, self.cfg = dataset, Path(out_dir), cfg
        self.log, self.progress, self.stop = log, progress, stop
        self.overwrite, self.inputs = overwrite, tuple(inputs)
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.distributed = self.world > 1

    def _stop_check(self, _results=None) -> None:
        if self.stop is not None and self.stop():
            raise TrainingStopped("asked to stop during a closed-loop evaluation")

    def run(self) -> dict:
        cfg, spec, ds = self.cfg, self.dataset.spec, self.dataset
        if not ds.train:
            from ..data.dataset import DatasetError

            raise DatasetError(f"{ds.path}: no training episodes (all "
                               f"{len(ds.episodes)} usable episodes went to validation)")
        longest = max(len(ep) for ep in ds.train)
        if cfg.chunk > longest:
            # a chunk's step k is trained on episodes longer than k only: past the longest,
            # the policy would act on outputs that were never trained
            raise SettingError(f"chunk {cfg.chunk} is longer than every training episode (the "
                               f"longest has {longest} steps): its steps past {longest} would "
                               f"never be trained; use --chunk {longest} or less")
        task = cfg.task or _infer_task(ds)
        if cfg.patience and not ds.val and not (task and cfg.eval_episodes):
            # every evaluation would count as one without improvement: the run would stop
            # after `patience` evaluations, having trained a fraction of its steps
            why = ("no validation episodes (val_fraction "
                   f"{cfg.val_fraction:g}, {len(ds.episodes)} usable episodes)")
            why += (" and eval_episodes 0" if not cfg.eval_episodes else
                    " and no task to evaluate in (set --task)")
            raise SettingError(f"patience {cfg.patience}: nothing to measure an improvement by: "
                               f"{why}; use --patience 0, or hold validation episodes out or "
                               "evaluate closed loop")
        device = resolve_device(cfg.device)
        if device.type == "cpu":
            # Denormal floats (a loss near zero) slow CPU training tens of times over:
            # measured 1,100 against 103,000 samples/s on a small reach run.
            torch.set_flush_denormal(True)
        owned_group = False  # a process group this run made, destroyed when it ends
        if self.distributed:
            import torch.distributed as dist

            if device.type == "cuda":
                device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
                torch.cuda.set_device(device)
            if not dist.is_initialized():
                # imported before the group exists: this module's functions take
                # `group=group.WORLD` as a default, which, evaluated after, would hold the
                # group for good (torch imports it with DDP), and gloo's threads would outlive
                # the run (see the end of this function)
                importlib.import_module("torch.distributed.nn.functional")

                dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
                owned_group = True
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        train = DeviceData(ds.arrays("train"), spec, cfg.chunk, device)
        val = DeviceData(ds.arrays("val"), spec, cfg.chunk, device) if ds.val else None
        family = policy_class(cfg.policy)
        stats = dict(ds.stats)
        relative = input_layout(spec)["relative"]
        if relative:
            over = cfg.chunk if family.action_statistics == "chunk" else 1
            stats["actions"] = relative_action_stats(relative, ds.arrays("train"), over)
        available = available_memory(device)
        try:  # its size, nothing allocated (the random state as it was)
            with torch.random.fork_rng(devices=[]), torch.device("meta"):
                need = _training_bytes(family.build(spec, stats, cfg), cfg.ema > 0)
        except Exception:  # noqa: BLE001 - a family that cannot build on meta: not estimated
            need = None
        if need is not None and available is not None and need > available:
            raise SettingError(f"{size_settings(cfg)}: training this policy needs about "
                               f"{_gb(need)} (weights, gradients, optimizer state), more than "
                               f"the {_gb(available)} free on {device}: make it smaller")
        try:
            policy = family.build(spec, stats, cfg).to(device)
        except (RuntimeError, MemoryError) as exc:
            if not (isinstance(exc, MemoryError) or _is_allocation_error(exc)):
                raise
            raise SettingError(f"{size_settings(cfg)}: not enough memory to build this policy "
                               f"on {device} ({str(exc).splitlines()[0][:160]})") from None
        if cfg.init_from:
            from .checkpoint import load_checkpoint

            start, _ = load_checkpoint(cfg.init_from, spec)
            was, now = start.cfg.to_dict(), policy.cfg.to_dict()
            changed = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
            free = set(type(policy.cfg).warm_start_free)
            if start.type_name != policy.type_name or set(changed) - free:
                from .checkpoint import CheckpointError

                if start.type_name != policy.type_name:
                    differ = f"policy {start.type_name} there, {policy.type_name} here"
                else:
                    differ = "; ".join(f"{k} {was.get(k)!r} there, {now.get(k)!r} here"
                                       for k in changed if k not in free)
                raise CheckpointError(f"init_from {cfg.init_from}: another architecture "
                                      f"({differ})")
            if changed:  # the family's settings that change no weight's meaning: this run's
                self.log("[train] warm start with this run's " + "; ".join(
                    f"{k} {now.get(k)!r} (the checkpoint's {was.get(k)!r})" for k in changed))
            policy.load_state_dict(start.state_dict())
            policy.set_statistics(spec, stats)  # this dataset's, not the start's
        check_actions_shape(policy, train, device)
        per_sample = None
        if available is not None:  # a batch that cannot fit: refused, not the OOM killer
            try:
                per_sample = _per_sample_bytes(policy, train, device)
            except Exception:  # noqa: BLE001 - not estimated: the first step tells
                policy.train()
        if per_sample is not None:
            if cfg.amp and device.type == "cuda":
                per_sample /= 2  # (bf16 activations)
            need = (need or _training_bytes(policy, cfg.ema > 0)) \
                + per_sample * cfg.batch_size / self.world
            if need > available:
                raise SettingError(
                    f"batch size {cfg.batch_size} ({size_settings(cfg)}): a training step needs "
                    f"about {_gb(need)} ({per_sample / 1024:.0f} KB a sample), more than the "
                    f"{_gb(available)} free on {device}: use a smaller --batch-size")
        norm = statistics_record(spec, stats)
        # an exponential moving average of the weights (what the checkpoints hold): a
        # diffusion denoiser's weights are noisy step to step, their average is not
        ema = EmaWeights(policy, cfg.ema) if cfg.ema > 0 else None
        held = ema.model if ema else policy  # validated, evaluated and saved
        model = PolicyLoss(policy)
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        amp = cfg.amp and device.type == "cuda"
        limits = training_limits(spec, ds.arrays("all"), cfg.robot, task)
        if self.rank == 0:
            self.log(f"[train] action limits stored in the checkpoint: {limits.source}")
        if self.rank == 0:
            self.log(f"[train] policy {cfg.policy}")
            constant = constant_inputs(spec, stats)
            if constant:
                self.log(f"[train] inputs constant in the training data (scaled by 1): "
                         f"{', '.join(constant)}")
        meta = {"dataset_fingerprint": dataset_fingerprint(ds), "train_config": asdict(cfg),
                "normalization": norm, "task": task, "action_limits": limits.to_dict()}
        meta["dataset"] = ds.summary  # what the build used and skipped, per reason
        if self.rank == 0 and ds.summary:
            self.log(f"[train] dataset: {ds.describe()}")
        created = None  # this run's folder, when this run made it
        if self.rank == 0:
            if self.overwrite:
                clear_run_folder(self.out, self.inputs)  # the earlier run, whole
            created = not self.out.exists()
        writer = self._writers() if self.rank == 0 else None
        saved: dict = {}  # the checkpoints this run wrote: name -> the step of its weights
        step = 0
        try:
            gen = torch.Generator(device=device)
            gen.manual_seed(cfg.seed)  # the same stream on every rank: one global batch per step
            if cfg.batch_size % self.world:
                raise SettingError(f"batch size {cfg.batch_size} does not divide among "
                                   f"{self.world} processes: use a multiple of the world size")
            taker = TrainStep(policy, train, batch_size=cfg.batch_size, lr=cfg.lr,
                              weight_decay=cfg.weight_decay, steps=cfg.steps,
                              shift=cfg.augment_shift, amp=cfg.amp, ema=ema, generator=gen,
                              model=model, rank=self.rank, world=self.world,
                              graph=cfg.cuda_graph, compile=cfg.compile,
                              log=self.log if self.rank == 0 else _quiet)
            best_val, best_success, stale, history, curve = math.inf, -1.0, 0, [], []
            success_val = math.inf  # the validation loss of best_success's weights
            running, t_data, t_step, t0 = math.nan, 0.0, 0.0, time.perf_counter()
            for step in range(1, cfg.steps + 1):
                t_a = time.perf_counter()
                batch = taker.draw()
                t_b = time.perf_counter()
                loss, metrics = taker.update(batch, step)
                evaluate = (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps
                if step % cfg.log_every == 0 or evaluate:
                    value = loss.detach()  # one sync per log interval (and evaluation)
                    if self.distributed:
                        import torch.distributed as dist

                        value = value.clone()
                        dist.all_reduce(value)  # gloo has no average: sum, then divide
                        value /= self.world
                    running = float(value)
                    if not math.isfinite(running):
                        raise SettingError(
                            f"training diverged: the loss is {running} at step {step} (lr "
                            f"{taker.last_lr:.3g}); nothing past the last evaluation is saved: "
                            "lower the learning rate")
                    curve.append((step, running))
                    if writer:
                        writer["tb"].add_scalar("loss/train", running, step)
                        for key, value in metrics.items():
                            writer["tb"].add_scalar(f"train/{key}", float(value), step)
                t_data += t_b - t_a
                t_step += time.perf_counter() - t_b
                if step % cfg.log_every == 0 and not self.distributed:
                    self._stop_check()  # (asked at each progress report; DDP: never)
                if not evaluate:
                    if self.progress and self.rank == 0 and step % cfg.log_every == 0:
                        self.progress(step, cfg.steps, {"train_loss": running})
                    continue
                row = {"step": step, "train_loss": running, "lr": taker.last_lr,
                       "samples_per_s": step * cfg.batch_size / max(t_data + t_step, 1e-9),
                       "data_share": t_data / max(t_data + t_step, 1e-9)}
                stop = False
                if self.rank == 0:
                    row["val_loss"] = self._val_loss(held, val, amp, device) if val else math.nan
                    if task and cfg.eval_episodes:
                        from .evaluation import evaluate_policy

                        result = evaluate_policy(held, spec, task, cfg.eval_episodes,
                                                 device=device, meta=meta,
                                                 progress=self._stop_check)
                        row["success_rate"] = result["success_rate"]
                    improved = False
                    if val and row["val_loss"] < best_val:
                        best_val, improved = row["val_loss"], True
                        self._save("best_val", held, spec, meta, row, saved)
                    if "success_rate" in row:
                        rate = row["success_rate"]
                        loss_now = row["val_loss"] if val else math.inf
                        # a tie in success (0% again): the weights with the lower validation
                        # loss, else the later (more trained) ones; only a higher rate is an
                        # improvement (patience)
                        if rate > best_success or (rate == best_success and (
                                loss_now < success_val if val else True)):
                            improved = improved or rate > best_success
                            best_success, success_val = rate, loss_now
                            self._save("best_success", held, spec, meta, row, saved)
                    stale = 0 if improved else stale + 1
                    stop = bool(cfg.patience and stale >= cfg.patience)
                    history.append(row)
                    self._log_row(writer, row)
                    if self.progress:
                        self.progress(step, cfg.steps, row)
                if self.distributed:
                    import torch.distributed as dist

                    flag = torch.tensor([float(stop)], device=device)
                    dist.broadcast(flag, 0)
                    stop = bool(flag.item())
                if stop:
                    self.log(f"early stop at step {step}: no improvement in {cfg.patience} "
                             "evaluations")
                    break
            result = {}
            if self.rank == 0:
                last = self._save("last", held, spec, meta, history[-1] if history else {},
                                  saved)
                # only a checkpoint this run wrote; a success rate of 0% tells no weights
                # apart: the validation loss does, else the last weights
                if best_success > 0 and "best_success" in saved:
                    best, best_by = self.out / "best_success", "success_rate"
                elif "best_val" in saved:
                    best, best_by = self.out / "best_val", "val_loss"
                else:
                    best, best_by = last, "last"
                result = {"steps": step, "best": str(best), "best_by": best_by,
                          "last": str(last),
                          "best_val_loss": best_val, "best_success_rate": best_success
                          if best_success >= 0 else None, "history": history,
                          "device": str(device), "world_size": self.world,
                          "cuda_graph": taker.captured, "compiled": taker.compiled,
                          "samples_per_s": step * cfg.batch_size / max(t_data + t_step, 1e-9),
                          "data_share": t_data / max(t_data + t_step, 1e-9),
                          "wall_s": time.perf_counter() - t0}
                result["dataset"] = meta["dataset"]
                self._finish(writer, history, curve, result)
            if self.distributed:
                import torch.distributed as dist

                dist.barrier()
            return result
        except BaseException as exc:
            if self.rank == 0 and step == 0 and not saved:
                # failed before its first step: nothing of it left behind
                if writer:
                    writer["tb"].close()
                shutil.rmtree(self.out / "tensorboard", ignore_errors=True)
                if created:
                    try:
                        self.out.rmdir()
                    except OSError:
                        pass
            if isinstance(exc, KeyboardInterrupt) and self.rank == 0:
                exc.kept = self._kept(saved)
            raise
        finally:
            if writer:
                writer["tb"].close()  # also when a run ends with an exception (a no-op after)
            if owned_group and dist.is_initialized():
                # the group's last holder: DDP's reducer, dropped first, so that destroying
                # the group joins gloo's threads here. Left running, one of them could free
                # a finished collective's tensors after the interpreter began to shut down,
                # and the process aborted at exit ("terminate called without an active
                # exception": a CI run's second process, its training done)
                model = taker = None
                dist.destroy_process_group()

    # ----------------------------------------------------------------- helpers
    @torch.no_grad()
    def _val_loss(self, policy: Policy, val: DeviceData, amp: bool, device) -> float:
        policy.eval()
        total, n = 0.0, 0
        for start in range(0, val.n, 4096):
            index = torch.arange(start, min(start + 4096, val.n), device=device)
            obs, actions, mask = val.batch(index)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss, _ = split_loss(policy.loss(Batch(obs, actions, mask)), policy)
            total += float(loss) * len(index)
            n += len(index)
        policy.train()
        return total / max(n, 1)

    def _save(self, name: str, policy: Policy, spec: Spec, meta: dict, row: dict,
              saved: dict) -> Path:
        path = save_checkpoint(self.out / name, policy, spec, stats=meta["normalization"],
                               train_config=meta["train_config"],
                               dataset_fingerprint=meta["dataset_fingerprint"],
                               extra={"task": meta["task"], "metrics": row,
                                      "dataset": meta["dataset"],
                                      "action_limits": meta["action_limits"]})
        saved[name] = row.get("step")
        return path

    def _kept(self, saved: dict) -> str:
        """What an interrupted run leaves: the checkpoints it wrote, with their steps."""
        if not saved:
            return "no checkpoint written"
        return "checkpoints kept: " + ", ".join(
            f"{self.out / name} (step {step})" for name, step in saved.items())

    def _writers(self) -> dict:
        from torch.utils.tensorboard import SummaryWriter

        self.out.mkdir(parents=True, exist_ok=True)
        return {"tb": SummaryWriter(str(self.out / "tensorboard"))}

    def _log_row(self, writer, row: dict) -> None:
        for key, value in row.items():
            if key != "step" and isinstance(value, float) and math.isfinite(value):
                writer["tb"].add_scalar(f"eval/{key}", value, row["step"])
        path = self.out / "log.csv"
        fields = ["step", "train_loss", "val_loss", "success_rate", "lr", "samples_per_s",
                  "data_share"]
        new = not path.exists()
        with _naming(path), open(path, "a", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)

    def _finish(self, writer, history: list, curve: list, result: dict) -> None:
        writer["tb"].close()
        with _naming(self.out / "result.json"):
            (self.out / "result.json").write_text(json.dumps({**result, "loss_curve": curve},
                                                             indent=1))
        if history:
            with _naming(self.out / "loss.png"):
                plot_losses(curve, history, self.out / "loss.png")


def plot_losses(curve: list, history: list, out: Path) -> None:
    """Training loss (every log interval), validation loss and success (every evaluation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([s for s, _ in curve], [v for _, v in curve], label="train")
    ax.plot(steps, [r.get("val_loss", math.nan) for r in history], "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    values = [v for _, v in curve] + [r.get("val_loss", 1.0) for r in history]
    if min(values) > 0:
        ax.set_yscale("log")  # negative log-likelihoods (probabilistic heads) stay linear
    ax.legend(loc="upper left")
    if any("success_rate" in r for r in history):
        ax2 = ax.twinx()
        ax2.plot(steps, [r.get("success_rate", math.nan) for r in history], "g--",
                 label="success rate")
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("success rate")
        ax2.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


@contextlib.contextmanager
def _naming(path: Path):
    """An OSError that names no file (a full disk on write) names ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.filename or not exc.strerror:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from None


def _quiet(*_args, **_kwargs) -> None:
    pass


def train(dataset, out_dir, cfg: TrainConfig | None = None, spec: Spec | str | None = None,
          log=print, progress=None, overwrite: bool = False, inputs=(), stop=None) -> dict:
    """Train on ``dataset`` (a folder of episodes or a built ``Dataset``); returns a summary.
    ``overwrite``: an earlier run in ``out_dir`` is removed whole before the first file is
    written (``Trainer``); ``inputs``: files the run reads (never cleared)."""
    from ..data.dataset import Dataset, build_dataset

    cfg = cfg or TrainConfig()
    if not isinstance(dataset, Dataset):
        dataset = build_dataset(dataset, spec=spec, val_fraction=cfg.val_fraction, seed=cfg.seed,
                                sources=cfg.sources or None,
                                include_interrupted=cfg.include_interrupted)
    return Trainer(dataset, out_dir, cfg, log=log, progress=progress, overwrite=overwrite,
                   inputs=inputs, stop=stop).run()
