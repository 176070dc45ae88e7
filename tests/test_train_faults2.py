"""Training faults (audit A, second pass): ``train --overwrite`` replaces the earlier run whole
and a run reports only checkpoints it wrote; a tie in closed-loop success is broken by the
validation loss and a 0% "best success" is never named the best over best_val; ``--patience``
with nothing to measure is refused before training; a checkpoint keeps its name through a
kill or a signal between a save's renames (and a later load puts it back), its files flushed;
a full disk is one line naming the file, no temporary folder left; huge widths and batches are
refused in one line before anything is allocated; ``--lr 1e-400`` is refused; a run that fails
before its first step leaves nothing; Ctrl-C names the checkpoints kept. The gymnasium task's
scripted expert, the suite's trainer, no ROS."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robot_imitation.data.lerobot import write_episode_bags
from robot_imitation.learning import evaluation as evaluation_module
from robot_imitation.learning import trainer as trainer_module
from robot_imitation.learning.checkpoint import (CheckpointError, load_checkpoint,
                                                 save_checkpoint)
from robot_imitation.learning.trainer import TrainConfig, train
from robot_imitation.policies import make_policy
from robot_imitation.rollouts.gym import episodes_dataset, expert_demonstrations
from robot_imitation.settings import SettingError
from robot_imitation.spec import Spec

CLI = [sys.executable, "-m", "robot_imitation.cli"]


def quiet(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def reach():
    spec = Spec.load("reach")
    return spec, expert_demonstrations("reach", range(4), spec)


@pytest.fixture(scope="module")
def reach_folder(reach, tmp_path_factory):
    """The four episodes as a dataset folder (bags), as `record` writes one."""
    spec, episodes = reach
    root = tmp_path_factory.mktemp("ds") / "reach"

    def items():
        for e in episodes:
            values = {f.key: e.obs[f.key] for f in spec.observations}
            at = 0
            for f in spec.actions:
                values[f.key] = e.actions[:, at:at + f.shape[0]]
                at += f.shape[0]
            yield values, len(e), {"status": "ok", "task": "reach", "success": e.success,
                                   "seed": e.seed, "operator": "expert", "notes": ""}

    write_episode_bags(root, spec, items(), spec.control_rate)
    return root


def cli(*args, cwd=None):
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def one_line(proc) -> str:
    assert proc.returncode == 1, proc.stdout[-1500:] + proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def metrics(checkpoint) -> dict:
    return json.loads((Path(checkpoint) / "policy.json").read_text())["metrics"]


def small(**settings) -> TrainConfig:
    base = dict(steps=20, batch_size=16, eval_every=10, eval_episodes=0, device="cpu", seed=0,
                log_every=10)
    return TrainConfig(**{**base, **settings})


# ============================================================================ 1. --overwrite
@pytest.mark.slow
def test_overwrite_replaces_the_earlier_run_whole(reach_folder, tmp_path, monkeypatch):
    run = tmp_path / "run"
    first = cli("train", reach_folder, "--out", run, "--device", "cpu", "--steps", "20",
                "--eval-every", "10", "--eval-episodes", "1", "--batch-size", "16")
    assert first.returncode == 0, first.stderr[-2000:]
    assert (run / "best_val").is_dir() and (run / "best_success").is_dir()
    second = cli("train", reach_folder, "--out", run, "--device", "cpu", "--steps", "10",
                 "--eval-every", "5", "--eval-episodes", "0", "--val-fraction", "0",
                 "--seed", "3", "--batch-size", "16", "--overwrite")
    assert second.returncode == 0, second.stderr[-2000:]
    # the first run's checkpoints are gone: none is reported as this run's best
    assert sorted(p.name for p in run.iterdir()) == ["last", "log.csv", "loss.png",
                                                     "result.json", "tensorboard"]
    result = json.loads((run / "result.json").read_text())
    assert result["best"] == str(run / "last"), result["best"]
    assert f"best checkpoint {run / 'last'}" in second.stdout
    assert [int(line.split(",")[0]) for line in
            (run / "log.csv").read_text().splitlines()[1:]] == [5, 10]
    assert len(list((run / "tensorboard").iterdir())) == 1
    assert json.loads((run / "last" / "policy.json").read_text())["training"]["seed"] == 3


def test_overwrite_clears_only_a_training_runs_folder(reach_folder, tmp_path):
    # a folder of other files: refused, nothing deleted
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    (mine / "last").mkdir()
    line = one_line(cli("train", reach_folder, "--out", mine, "--device", "cpu", "--steps",
                        "5", "--overwrite"))
    assert line == (f"robot-imitation train: {mine} is not a training run's folder (it holds "
                    "notes.txt): not cleared (choose another --out)"), line
    assert (mine / "notes.txt").read_text() == "mine" and (mine / "last").is_dir()
    # a run folder that holds the run's input (a warm start from the earlier run): refused
    run = tmp_path / "run"
    assert cli("train", reach_folder, "--out", run, "--device", "cpu", "--steps", "5",
               "--eval-episodes", "0").returncode == 0
    line = one_line(cli("train", reach_folder, "--out", run, "--device", "cpu", "--steps",
                        "5", "--eval-episodes", "0", "--init-from", run / "last",
                        "--overwrite"))
    assert line == (f"robot-imitation train: {run} holds the run's input {run / 'last'}: not "
                    "cleared (choose another output folder)"), line
    assert load_checkpoint(run / "last")
    # a new run that fails before it writes anything: the earlier run is still whole
    before = sorted(p.name for p in run.iterdir())
    line = one_line(cli("train", reach_folder, "--out", run, "--device", "cpu", "--steps",
                        "5", "--eval-episodes", "0", "--policy", "act", "--chunk", "500",
                        "--overwrite"))
    assert "chunk 500 is longer than every training episode" in line, line
    assert sorted(p.name for p in run.iterdir()) == before
    assert load_checkpoint(run / "last")


# ================================================================ 2. best by success, a tie
def test_a_success_tie_is_broken_by_validation_loss_and_0_percent_is_not_best(
        reach, tmp_path, monkeypatch):
    spec, episodes = reach
    calls = []

    def never(policy, spec, task, episodes, **kwargs):  # every evaluation: 0% success
        calls.append(task)
        return {"success_rate": 0.0}

    monkeypatch.setattr(evaluation_module, "evaluate_policy", never)
    cfg = small(steps=30, eval_episodes=1, task="reach", val_fraction=0.25)
    result = train(episodes_dataset(episodes, spec, cfg), tmp_path / "run", cfg, log=quiet)
    assert len(calls) == 3
    losses = {row["step"]: row["val_loss"] for row in result["history"]}
    assert len(set(losses.values())) == 3
    # best_success holds the weights with the lowest validation loss of the tie (not the
    # first evaluation's)
    assert metrics(tmp_path / "run" / "best_success")["step"] == min(losses, key=losses.get)
    # 0% tells no weights apart: the best is best_val, and the result says by what
    assert result["best"] == str(tmp_path / "run" / "best_val"), result["best"]
    assert result["best_by"] == "val_loss"
    assert result["best_success_rate"] == 0.0


def test_a_success_tie_without_validation_takes_the_later_weights(reach, tmp_path,
                                                                  monkeypatch):
    spec, episodes = reach
    monkeypatch.setattr(evaluation_module, "evaluate_policy",
                        lambda *a, **k: {"success_rate": 0.5})
    cfg = small(steps=30, eval_episodes=1, task="reach", val_fraction=0.0)
    result = train(episodes_dataset(episodes, spec, cfg), tmp_path / "run", cfg, log=quiet)
    assert metrics(tmp_path / "run" / "best_success")["step"] == 30
    assert result["best"] == str(tmp_path / "run" / "best_success")
    assert result["best_by"] == "success_rate"


# ============================================================ 3. patience with no measure
def test_patience_with_nothing_to_measure_is_refused_before_training(reach, tmp_path):
    spec, episodes = reach
    cfg = small(steps=1000, eval_every=10, val_fraction=0.0, patience=2)
    with pytest.raises(SettingError, match=r"^patience 2: nothing to measure an improvement "
                       r"by: no validation episodes \(val_fraction 0, 4 usable episodes\) and "
                       r"eval_episodes 0; use --patience 0"):
        train(episodes_dataset(episodes, spec, cfg), tmp_path / "run", cfg, log=quiet)
    assert not (tmp_path / "run").exists()
    # with a measure (validation episodes): early stopping as before
    cfg = small(steps=1000, eval_every=10, val_fraction=0.25, patience=2, lr=1e-7)
    result = train(episodes_dataset(episodes, spec, cfg), tmp_path / "val", cfg, log=quiet)
    assert result["steps"] <= 1000


# ======================================================= 4. a kill between a save's renames
KILLED_SAVE = r"""
import os, pathlib, sys, torch
from robot_imitation.learning import checkpoint
from robot_imitation.learning.trainer import TrainConfig
from robot_imitation.policies import make_policy
from robot_imitation.spec import Spec

spec = Spec.load("reach")
policy = make_policy(spec, TrainConfig(steps=1, device="cpu"))
path = pathlib.Path(sys.argv[1])
checkpoint.save_checkpoint(path, policy, spec, extra={"which": "first"})
with torch.no_grad():
    next(policy.parameters()).add_(1.0)
checkpoint._exchange = lambda a, b: False  # the two-rename way (a file system without swap)
rename = pathlib.Path.rename

def dying(self, target):
    out = rename(self, target)
    if self.name == path.name and ".old-" in pathlib.Path(target).name:
        os._exit(9)  # as SIGKILL (or the OOM killer) right there
    return out

pathlib.Path.rename = dying
checkpoint.save_checkpoint(path, policy, spec, extra={"which": "second"})
"""


def test_a_kill_between_a_saves_renames_loses_no_checkpoint(tmp_path):
    path = tmp_path / "best_val"
    proc = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(path)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr[-2000:]
    # the next load finds the earlier checkpoint under its name
    policy, meta = load_checkpoint(path)
    assert meta["which"] == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_val"]


SIGNALLED_SAVE = r"""
import os, pathlib, signal, sys, torch
from robot_imitation.learning import checkpoint
from robot_imitation.learning.trainer import TrainConfig
from robot_imitation.policies import make_policy
from robot_imitation.spec import Spec

def on_sigterm(signum, frame):  # as the command line's: Ctrl-C's cleanup
    raise KeyboardInterrupt

signal.signal(signal.SIGTERM, on_sigterm)
# a thread that does not block the signals, as torch's own: the kernel hands a signal sent to
# the process to it when the main thread blocks them
import threading, time
threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
spec = Spec.load("reach")
policy = make_policy(spec, TrainConfig(steps=1, device="cpu"))
path = pathlib.Path(sys.argv[1])
checkpoint.save_checkpoint(path, policy, spec, extra={"which": "first"})
checkpoint._exchange = lambda a, b: False
rename = pathlib.Path.rename

wake_r, wake_w = os.pipe()
os.set_blocking(wake_w, False)
signal.set_wakeup_fd(wake_w)  # the signal's C handler writes here, in whichever thread


def signalled(self, target):
    out = rename(self, target)
    if self.name == path.name and ".old-" in pathlib.Path(target).name:
        os.kill(os.getpid(), signal.SIGTERM)
        os.read(wake_r, 1)  # handled at C level: Python runs its handler at the next chance
    return out

pathlib.Path.rename = signalled
try:
    checkpoint.save_checkpoint(path, policy, spec, extra={"which": "second"})
except KeyboardInterrupt:
    sys.exit(143)
"""


def test_a_signal_between_a_saves_renames_waits_for_the_swap(tmp_path):
    path = tmp_path / "best_val"
    proc = subprocess.run([sys.executable, "-c", SIGNALLED_SAVE, str(path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert (path / "policy.json").is_file(), sorted(p.name for p in tmp_path.iterdir())
    _, meta = load_checkpoint(path)
    assert meta["which"] == "second"


def test_a_save_swaps_in_one_step_and_flushes_its_files(reach, tmp_path, monkeypatch):
    spec, _ = reach
    policy = make_policy(spec, TrainConfig(steps=1, device="cpu"))
    path = tmp_path / "best_val"
    save_checkpoint(path, policy, spec, extra={"which": "first"})
    synced = []
    fsync = os.fsync

    def recording(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    renames = []
    monkeypatch.setattr(Path, "rename", lambda self, target: renames.append(self))
    save_checkpoint(path, policy, spec, extra={"which": "second"})
    assert renames == []  # the swap: path names a checkpoint at every moment
    assert load_checkpoint(path)[1]["which"] == "second"
    tmp = f".best_val.tmp-{os.getpid()}"
    assert str(tmp_path / tmp / "model.safetensors") in synced, synced
    assert str(tmp_path / tmp / "policy.json") in synced, synced
    assert str(tmp_path / tmp) in synced and str(tmp_path) in synced, synced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_val"]


# ============================================================================ 7. full disk
def fill(disk: Path, leave: int) -> None:
    """Fill the small tmpfs but ``leave`` bytes."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(free - leave, 0))


@pytest.mark.parametrize("leave,file", [(64 * 1024, "model.safetensors"), (None, "policy.json")])
def test_a_full_disk_is_one_line_naming_the_file_and_leaves_no_temporary_folder(
        reach, tmp_path, small_disk, leave, file):
    spec, _ = reach
    policy = make_policy(spec, TrainConfig(steps=1, device="cpu"))
    sizes = save_checkpoint(tmp_path / "probe", policy, spec)
    weights = (sizes / "model.safetensors").stat().st_size
    path = small_disk / "best_val"
    save_checkpoint(path, policy, spec, extra={"which": "first"})
    if leave is None:  # room for the weights, none for policy.json
        leave = -(-weights // 4096) * 4096
    fill(small_disk, leave)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(path, policy, spec, extra={"which": "second"})
    message = str(info.value)
    assert "\n" not in message
    assert message == (f"{path}: not saved: cannot write {path / file}: No space left on "
                       "device; the earlier checkpoint there is kept"), message
    assert sorted(p.name for p in small_disk.iterdir()) == ["best_val", "filler"]
    assert load_checkpoint(path)[1]["which"] == "first"


# ============================================================================= 8. huge sizes
def test_huge_widths_are_refused_in_one_line_naming_the_setting():
    with pytest.raises(SettingError, match=r"^hidden 100000000: 100000000 is wider than 65536, the "
                       r"widest layer a policy takes$"):
        TrainConfig(hidden=[100000000])
    with pytest.raises(SettingError, match="feedforward must be a positive integer up to 65536, "
                       "got 1000000000"):
        TrainConfig(policy="act", policy_config={"feedforward": 10**9})
    with pytest.raises(SettingError, match="width must be a positive integer up to 65536"):
        TrainConfig(policy="diffusion", policy_config={"width": 10**8})


def test_a_policy_or_a_batch_too_large_for_the_memory_is_refused_before_training(
        reach, tmp_path, monkeypatch):
    spec, episodes = reach
    monkeypatch.setattr(trainer_module, "available_memory", lambda device: 100 * 2**20,
                        raising=False)
    # 2 x 4096 wide: 17 M parameters, about 270 MB with gradients and AdamW's moments
    cfg = small(steps=1, hidden=[4096, 4096], val_fraction=0.0)
    with pytest.raises(SettingError, match=r"^policy mlp, hidden 4096,4096, chunk 1: training "
                       r"this policy needs about 0\.\d GB \(weights, gradients, optimizer "
                       r"state\), more than the 0\.1 GB free on cpu: make it smaller$"):
        train(episodes_dataset(episodes, spec, cfg), tmp_path / "wide", cfg, log=quiet)
    assert not (tmp_path / "wide").exists()
    # act at batch 1,024: about 300 KB a sample
    cfg = small(steps=1, policy="act", batch_size=1024, val_fraction=0.0)
    with pytest.raises(SettingError, match=r"^batch size 1024 \(policy act, chunk 8\): a "
                       r"training step needs about 0\.\d GB \(\d+ KB a sample\), more than the "
                       r"0\.1 GB free on cpu: use a smaller --batch-size$"):
        train(episodes_dataset(episodes, spec, cfg), tmp_path / "batch", cfg, log=quiet)
    assert not (tmp_path / "batch").exists()


def test_a_failed_allocation_at_build_is_one_line_naming_the_settings(reach, tmp_path,
                                                                      monkeypatch):
    spec, episodes = reach
    from robot_imitation.policies import policy_class

    family = policy_class("mlp")

    def build(*args, **kwargs):
        if torch.empty(0).device.type == "meta":
            return real(*args, **kwargs)
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: "
                           "not enough memory: you tried to allocate 102400000000 bytes.")

    real = family.build
    monkeypatch.setattr(family, "build", build)
    cfg = small(steps=1, val_fraction=0.0)
    with pytest.raises(SettingError, match=r"^policy mlp, hidden 256,256, chunk 1: not enough "
                       r"memory to build this policy on cpu \(\[enforce fail"):
        train(episodes_dataset(episodes, spec, cfg), tmp_path / "run", cfg, log=quiet)
    assert not (tmp_path / "run").exists()


# ================================================================================== minor
def test_a_learning_rate_that_reads_as_zero_is_refused(tmp_path):
    for text in ("1e-400", "0"):
        line = one_line(cli("train", tmp_path / "nowhere", "--out", tmp_path / "run", "--lr",
                            text))
        assert line == ("robot-imitation train: --lr 0.0: a learning rate of 0 (or one too "
                        "small for a float, such as 1e-400) trains nothing; leave it out for "
                        "the policy family's default"), line
    assert not (tmp_path / "run").exists()


def test_a_run_that_fails_before_its_first_step_leaves_nothing(reach, tmp_path, monkeypatch):
    spec, episodes = reach

    def broken(*args, **kwargs):
        raise SettingError("no step for you")

    monkeypatch.setattr(trainer_module, "TrainStep", broken)
    cfg = small(steps=5, val_fraction=0.0)
    with pytest.raises(SettingError, match="no step for you"):
        train(episodes_dataset(episodes, spec, cfg), tmp_path / "run", cfg, log=quiet)
    assert not (tmp_path / "run").exists()


def test_an_interrupted_run_names_the_checkpoints_it_kept(reach, tmp_path):
    spec, episodes = reach

    def progress(step, total, row):
        if step == 20 and "val_loss" in row:
            raise KeyboardInterrupt

    cfg = small(steps=100, val_fraction=0.25, lr=1e-7)
    with pytest.raises(KeyboardInterrupt) as info:
        train(episodes_dataset(episodes, spec, cfg), tmp_path / "run", cfg, log=quiet,
              progress=progress)
    kept = getattr(info.value, "kept", "")
    step = metrics(tmp_path / "run" / "best_val")["step"]
    assert kept == f"checkpoints kept: {tmp_path / 'run' / 'best_val'} (step {step})", kept


def test_a_stop_asked_during_a_closed_loop_evaluation_ends_it_after_the_episode(reach,
                                                                                tmp_path):
    """The trainer node's ~/cancel and Ctrl-C were seen only at progress reports, after a
    closed-loop evaluation of any length (150 episodes: the node waited for all of them).
    ``Trainer(stop=...)`` is asked after each evaluation episode: the run ends there
    (``TrainingStopped``), the unfinished evaluation counting for nothing."""
    from robot_imitation.learning.trainer import Trainer, TrainingStopped

    spec, episodes = reach
    asked = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) >= 2

    cfg = small(steps=20, eval_every=20, eval_episodes=150, task="reach")
    with pytest.raises(TrainingStopped):
        Trainer(episodes_dataset(episodes, spec, cfg), tmp_path / "run", cfg, log=quiet,
                stop=stop).run()
    assert len(asked) == 2  # one episode each time asked: stopped after the second
    for name in ("best_success", "best_val", "last", "result.json"):
        assert not (tmp_path / "run" / name).exists(), name


def test_a_stop_asked_while_training_ends_the_run_at_its_next_progress_report(reach,
                                                                              tmp_path):
    """``Trainer(stop=...)`` is asked at each progress report too (every ``log_every`` steps):
    a DAgger node shutting down stops the policy training rather than leaving it running (it
    was abandoned, still training, at the process's exit). Nothing of the run is kept."""
    from robot_imitation.learning.trainer import Trainer, TrainingStopped

    spec, episodes = reach
    asked = []

    def stop() -> bool:
        asked.append(1)
        return True

    cfg = small(steps=1000, eval_every=0, eval_episodes=0, log_every=10)
    with pytest.raises(TrainingStopped):
        Trainer(episodes_dataset(episodes, spec, cfg), tmp_path / "run", cfg, log=quiet,
                stop=stop).run()
    assert len(asked) == 1
    assert not (tmp_path / "run" / "last").exists()


def test_a_dagger_run_aborted_while_training_is_marked_unfinished(tmp_path):
    """``algorithms.dagger.run(abort=...)``: the policy under training stops at its next
    progress report, and dagger.json says the run is unfinished and where (as Ctrl-C does)."""
    from robot_imitation.algorithms.dagger import DaggerConfig, check_config, run
    from robot_imitation.learning.trainer import TrainingStopped
    from robot_imitation.rollouts.gym import GymLearningWorld

    cfg = DaggerConfig(task="reach", bc_episodes=2, iterations=1, episodes_per_iteration=1,
                       eval_episodes=1, train={"steps": 200, "device": "cpu", "log_every": 10})
    tcfg, spec = check_config(cfg, through="gym")
    world = GymLearningWorld("reach", spec, seed=0)
    try:
        with pytest.raises(TrainingStopped):
            run(world, cfg, tcfg, spec, tmp_path / "run", log=quiet, abort=lambda: True)
    finally:
        world.close()
    results = json.loads((tmp_path / "run" / "dagger.json").read_text())
    assert results["interrupted"] is True and results["interrupted_iteration"] == 0
    assert results["iterations"] == []
