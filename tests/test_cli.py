"""A user's mistakes on the command line: run the way a user runs it (`python -m
robot_imitation.cli` in its own process), each gives one line on stderr naming the bad value, a
non-zero exit and nothing written, found before any process starts or any time passes. The same
limits hold for the settings dataclasses in code; a node that dies is reported with its own
error; Ctrl-C stops the command and its processes."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import untrained_checkpoint


def cli(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "robot_imitation.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


def one_line(proc, code: int = 1) -> str:
    """The process's stderr, checked to be a single line, with the exit code ``code``."""
    assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def files_under(path: Path) -> list:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture(scope="module")
def push_checkpoint(tmp_path_factory):
    """A checkpoint of the push spec (untrained weights: only its interface matters here)."""
    return untrained_checkpoint(tmp_path_factory.mktemp("push") / "ckpt", "push")


# --------------------------------------------------------------------------- numeric options
BAD_OPTIONS = [
    ("expert", [], "--episodes", "0", "a positive integer"),
    ("expert", [], "--episodes", "-3", "a positive integer"),
    ("expert", [], "--seed", "-1", "an integer from 0 to 4294967295"),
    ("demo", [], "--episodes", "0", "a positive integer"),
    ("demo", [], "--timeout", "0", "a positive number"),
    ("demo", [], "--min-success", "1.5", "a number in [0, 1]"),
    ("record", ["{tmp}/ds"], "--episodes", "0", "a positive integer"),
    ("evaluate", ["{tmp}/ckpt", "--gym"], "--episodes", "-2", "a positive integer"),
    ("evaluate", ["{tmp}/ckpt"], "--threshold", "2", "a number in [0, 1]"),
    ("train", ["{tmp}/ds"], "--steps", "0", "a positive integer"),
    ("train", ["{tmp}/ds"], "--steps", "-5", "a positive integer"),
    ("train", ["{tmp}/ds"], "--batch-size", "0", "an integer from 1 to 1048576"),
    # (an allocation traceback, or the OOM killer, at the first step)
    ("train", ["{tmp}/ds"], "--batch-size", "1000000000000", "an integer from 1 to 1048576"),
    ("train", ["{tmp}/ds"], "--chunk", "1001", "an integer from 0 to 1000"),
    ("train", ["{tmp}/ds"], "--lr", "fast", "a number in [0, 1]"),
    ("train", ["{tmp}/ds"], "--hidden", "256,0", "a non-empty list of positive integers"),
    ("dagger", [], "--bc-episodes", "0",
     "an integer from 1 to 10000 (more would take iteration 1's seeds)"),
    ("dagger", [], "--iterations", "-1",
     "an integer from 0 to 49 (iteration 50's episodes would take the evaluation seeds)"),
    ("dagger", [], "--steps", "0", "a positive integer"),
    ("dagger", [], "--hold", "0", "a positive integer"),
    ("pipeline", [], "--beta0", "2", "a number in [0, 1]"),
    ("pipeline", [], "--eval-episodes", "0",
     "an integer from 1 to 500000 (more would take seed 1's demonstration seeds)"),
]


@pytest.mark.parametrize("command,args,option,value,limit", BAD_OPTIONS,
                         ids=[f"{c}{o}={v}" for c, _, o, v, _ in BAD_OPTIONS])
def test_a_bad_number_is_refused_by_the_parser(tmp_path, command, args, option, value, limit):
    """`--episodes 0` was a ZeroDivisionError (expert, evaluate) or a FileNotFoundError
    (record), `--episodes -3` a success rate with a 456% interval and exit 0, `--steps 0/-5` an
    untrained checkpoint and exit 0, `--batch-size 0` a torch traceback (`--chunk 0` now takes
    the policy family's default)."""
    out = tmp_path / "out"
    extra = ["--out", out] if command in ("demo", "train", "dagger", "pipeline") else []
    if command == "evaluate":
        extra = ["--out", out / "result.json"]
    proc = cli(command, *[a.format(tmp=tmp_path) for a in args], *extra, option, value,
               cwd=tmp_path)
    assert one_line(proc, 2) == (f"robot-imitation {command}: error: argument {option}: "
                                 f"must be {limit}, got {value}")
    assert files_under(tmp_path) == []  # nothing written, in the output or the working folder


def test_the_settings_dataclasses_hold_the_same_limits():
    """TrainConfig and DaggerConfig refuse what the command line refuses, with the same words,
    however they are made (in code, from a dict, from a YAML file)."""
    from robot_imitation.learning.trainer import TrainConfig
    from robot_imitation.settings import SettingError, limits_of

    for bad, words in [({"steps": 0}, "steps must be a positive integer, got 0"),
                       ({"batch_size": -1},
                        "batch_size must be an integer from 1 to 1048576, got -1"),
                       ({"chunk": -1}, "chunk must be an integer from 0 to 1000, got -1"),
                       ({"lr": float("nan")}, "lr must be a number in [0, 1], got nan"),
                       ({"steps": "100"}, "steps must be a positive integer, got '100'"),
                       ({"steps": True}, "steps must be a positive integer, got True"),
                       ({"hidden": []}, "hidden must be a non-empty list of positive integers"),
                       ({"head": "mlp"}, "head must be one of mse, gaussian, gmm, categorical"),
                       ({"stepz": 5}, "unknown training settings ['stepz']")]:
        with pytest.raises(SettingError) as err:
            TrainConfig.from_dict(bad)
        assert str(err.value).startswith(words), err.value
    with pytest.raises(SettingError, match="steps must be a positive integer, got 0"):
        TrainConfig(steps=0)
    assert limits_of(TrainConfig, "steps").describe() == "a positive integer"

    from robot_imitation.dagger import DaggerConfig, check_config


    for bad, words in [({"bc_episodes": 0}, "bc_episodes must be an integer from 1 to 10000"),
                       ({"iterations": -1}, "iterations must be an integer from 0 to 49"),
                       ({"eval_episodes": 0}, "eval_episodes must be an integer from 1 to "),
                       ({"beta0": 1.5}, "beta0 must be a number in [0, 1], got 1.5"),
                       ({"variant": "dagger"}, "variant must be one of gated, mixture"),
                       ({"supervisor": {"hold": 0}}, "supervisor hold must be a positive"),
                       ({"supervisor": {"holdd": 3}}, "unknown supervisor settings ['holdd']")]:
        with pytest.raises(SettingError) as err:
            DaggerConfig(**bad)
        assert str(err.value).startswith(words), err.value
    # the training settings of a run are checked when it starts, before anything else
    with pytest.raises(SettingError, match=r"^train: steps must be a positive integer, got 0"):
        check_config(DaggerConfig(task="reach", train={"steps": 0}))


# --------------------------------------------------------------------------- train
def test_train_config_file_is_held_to_the_same_limits(tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("steps: 0\nbatch_size: 64\n")
    line = one_line(cli("train", tmp_path / "ds", "--out", tmp_path / "run", "--config", cfg))
    assert line == f"robot-imitation train: {cfg}: steps must be a positive integer, got 0"
    cfg.write_text("batch_size: 64\nlearning_rate: 0.1\n")
    line = one_line(cli("train", tmp_path / "ds", "--out", tmp_path / "run", "--config", cfg))
    assert line.startswith(f"robot-imitation train: {cfg}: unknown training settings "
                           "['learning_rate']")
    cfg.write_text("batch_size: 64\nhidden: [256, 256\n")  # a YAML syntax error
    line = one_line(cli("train", tmp_path / "ds", "--out", tmp_path / "run", "--config", cfg))
    assert line.startswith(f"robot-imitation train: {cfg}, line 3, column 1: not valid YAML")
    assert files_under(tmp_path) == ["train.yaml"]


@pytest.mark.slow
def test_train_errors_are_one_line_before_any_training(tmp_path):
    """`train` turned every error into a traceback."""
    run = tmp_path / "run"
    line = one_line(cli("train", tmp_path / "nothing", "--out", run))
    assert line == f"robot-imitation train: {tmp_path / 'nothing'}: no such dataset folder"
    (tmp_path / "bags").mkdir()
    line = one_line(cli("train", tmp_path / "bags", "--out", run, "--task", "nosuch"))
    assert "unknown task 'nosuch'" in line and "reach" in line, line
    # a built-in task whose evaluation cannot feed the dataset's spec: found up front
    line = one_line(cli("train", tmp_path / "bags", "--spec", "push", "--task", "reach",
                        "--out", run))
    assert "needs observation 'object_pose', which task 'reach' does not provide" in line, line
    # an output folder that cannot be written (a file stands where its parent should be)
    (tmp_path / "file").write_text("")
    line = one_line(cli("train", tmp_path / "bags", "--spec", "reach", "--out",
                        tmp_path / "file" / "run"))
    assert line.startswith(f"robot-imitation train: cannot write into {tmp_path / 'file'}"), line
    # an error found while the dataset is built, inside the trainer
    from robot_imitation.recording.recorder import DatasetWriter
    from robot_imitation.spec import Spec

    DatasetWriter(tmp_path / "empty", Spec.load("reach"))
    line = one_line(cli("train", tmp_path / "empty", "--out", run))
    assert line.startswith(f"robot-imitation train: {tmp_path / 'empty'}"), line
    # a robot whose action limits the checkpoint should carry: unknown, or not this spec's
    line = one_line(cli("train", tmp_path / "empty", "--out", run, "--robot", "nosuch"))
    assert "unknown robot 'nosuch'" in line, line
    assert files_under(tmp_path) == ["bags", "empty", "empty/dataset.yaml", "file"]
    # an output folder that holds files: an earlier run's checkpoints were replaced (and
    # anything else under last/ deleted) without a word
    (run / "last").mkdir(parents=True)
    (run / "last" / "notes.txt").write_text("mine")
    line = one_line(cli("train", tmp_path / "bags", "--spec", "reach", "--out", run))
    assert line == f"robot-imitation train: {run} exists and is not empty: an earlier run's " \
                   "checkpoints would be replaced (choose another --out, or --overwrite)", line
    assert (run / "last" / "notes.txt").read_text() == "mine"
    line = one_line(cli("train", tmp_path / "bags", "--spec", "reach", "--out", run,
                        "--overwrite"))  # taken: the empty folder of bags fails next
    assert line.startswith(f"robot-imitation train: {tmp_path / 'bags'}"), line


# --------------------------------------------------------------------------- specs
def test_a_spec_yaml_syntax_error_names_file_line_and_column(tmp_path):
    from robot_imitation.spec import Spec, SpecError

    bad = tmp_path / "my_spec.yaml"
    bad.write_text("name: mine\ncontrol_rate: 20.0\nobservations: [\n  {key: a}\n")
    with pytest.raises(SpecError, match=rf"^{bad}, line 5, column 1: not valid YAML: "):
        Spec.load(bad)
    line = one_line(cli("record", tmp_path / "ds", "--task", "reach", "--spec", bad))
    assert line.startswith(f"robot-imitation record: {bad}, line 5, column 1: not valid YAML")
    assert files_under(tmp_path) == ["my_spec.yaml"]


def test_a_binary_file_given_as_a_spec_task_or_robot_is_named(tmp_path):
    """A file that is not UTF-8 text raised UnicodeDecodeError, naming no file (the nodes
    printed `fatal: UnicodeDecodeError: 'utf-8' codec can't decode byte 0xe0 ...`)."""
    from robot_imitation.sim.robot import ModelError, RobotConfig
    from robot_imitation.sim.tasks import TaskConfig
    from robot_imitation.spec import Spec, SpecError

    bad = tmp_path / "blob.yaml"
    bad.write_bytes(b"\xe0\x01\x02 not text")
    says = rf"^{bad}: not a text file \(byte 0xe0 at offset 0 is not UTF-8\)$"
    with pytest.raises(SpecError, match=says):
        Spec.load(bad)
    with pytest.raises(ModelError, match=says):
        TaskConfig.load(bad)
    with pytest.raises(ModelError, match=says):
        RobotConfig.load(bad)
    line = one_line(cli("record", tmp_path / "ds", "--task", "reach", "--spec", bad))
    assert line == f"robot-imitation record: {bad}: not a text file (byte 0xe0 at offset 0 " \
                   "is not UTF-8)", line
    assert files_under(tmp_path) == ["blob.yaml"]


# --------------------------------------------------------------------------- evaluate
@pytest.mark.parametrize("way", ["--gym", "--ros"])
def test_a_checkpoint_for_another_task_is_refused_up_front(tmp_path, push_checkpoint, way):
    """A push checkpoint evaluated on reach was `KeyError: 'object_pose'` (--gym)."""
    out = tmp_path / "eval"
    line = one_line(cli("evaluate", push_checkpoint, "--task", "reach", way, "--episodes", 2,
                        "--out", out / "result.json"))
    assert line.startswith(f"robot-imitation evaluate: checkpoint {push_checkpoint} needs "
                           "observation 'object_pose'"), line
    assert "task 'reach'" in line
    assert files_under(tmp_path) == []  # no result, no process logs


@pytest.mark.parametrize("way", ["--gym", "--ros"])
def test_a_checkpoint_of_another_control_rate_is_refused_up_front(tmp_path, way):
    """A push policy trained at 5 Hz, evaluated on push (20 Hz), ran without a word: each of
    its actions held for a quarter of the time it was trained for."""
    from robot_imitation.spec import Spec

    slow = Spec.from_dict({**Spec.load("push").to_dict(), "control_rate": 5.0})
    ckpt = untrained_checkpoint(tmp_path / "ckpt", "push", slow)
    line = one_line(cli("evaluate", ckpt, "--task", "push", way, "--episodes", 2, "--out",
                        tmp_path / "eval" / "result.json"))
    assert line == f"robot-imitation evaluate: checkpoint {ckpt} runs at 5 Hz (its spec " \
                   "'push'), and task 'push' ticks at 20 Hz: each of its actions would be held " \
                   "for another time than in its training data", line
    assert files_under(tmp_path) == ["ckpt", "ckpt/model.safetensors", "ckpt/policy.json"]


def test_an_out_that_is_a_folder_is_refused_before_any_episode(tmp_path, push_checkpoint):
    """`evaluate --out FOLDER` ran every episode, then failed on writing the result ("Is a
    directory"): the result lost."""
    (tmp_path / "eval").mkdir()
    line = one_line(cli("evaluate", push_checkpoint, "--gym", "--episodes", 2, "--out",
                        tmp_path / "eval"))
    assert line == f"robot-imitation evaluate: --out {tmp_path / 'eval'} is a folder: give " \
                   "the JSON file to write", line
    assert files_under(tmp_path) == ["eval"]


@pytest.mark.parametrize("flags", [["--compose"], ["--no-compose"], ["--join-ros-graph"],
                                   ["--compose", "--join-ros-graph"]])
def test_ros_options_with_gym_are_refused_not_ignored(tmp_path, push_checkpoint, flags):
    """`evaluate --gym --compose` (or `--join-ros-graph`) ran in the gymnasium task and said
    nothing of the option it dropped."""
    line = one_line(cli("evaluate", push_checkpoint, "--gym", *flags, "--episodes", 1))
    assert line == f"robot-imitation evaluate: {' and '.join(flags)}: for a run through ROS " \
                   "(--ros, the default); --gym runs without ROS", line


@pytest.mark.ros
@pytest.mark.parametrize("flags, processes", [([], ["episode_recorder",
                                                   "mujoco_bridge+scripted_expert"]),
                                              (["--no-compose"], ["episode_recorder",
                                                                  "mujoco_bridge",
                                                                  "scripted_expert"])],
                         ids=["default", "no-compose"])
def test_a_simulated_run_shares_one_process_unless_asked_not_to(tmp_path, flags, processes):
    """A lockstep run through ROS puts the bridge and its controllers in one process by default
    (the lockstep about a third faster, the same episodes: ``test_world_parity.py``);
    ``--no-compose`` starts each node in its own, as on a robot. The recorder is always apart."""
    ds = tmp_path / "ds"
    proc = cli("record", ds, "--task", "reach", "--episodes", 1, *flags)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert sorted(p.name[:-len(".log")] for p in (ds / "logs").glob("*.log")) == processes


# --------------------------------------------------------------------------- dagger, pipeline
def test_a_dagger_run_checks_its_settings_before_recording(tmp_path):
    """A device that is not there was found only after the demonstrations were recorded."""
    import torch

    out = tmp_path / "run"
    line = one_line(cli("dagger", "--task", "nosuch", "--out", out))
    assert line.startswith("robot-imitation dagger: unknown task 'nosuch'"), line
    if not torch.cuda.is_available():
        line = one_line(cli("dagger", "--task", "reach", "--device", "cuda", "--out", out))
        assert line == ("robot-imitation dagger: train: device cuda asked for, but no CUDA "
                        "device is available")
    (tmp_path / "file").write_text("")
    line = one_line(cli("pipeline", "--task", "reach", "--out", tmp_path / "file" / "run"))
    assert line.startswith(f"robot-imitation pipeline: cannot write into "
                           f"{tmp_path / 'file' / 'run'}"), line
    assert files_under(tmp_path) == ["file"]


# --------------------------------------------------------------------------- ROS commands
def test_demo_of_an_unknown_task_fails_at_once(tmp_path):
    """`demo --task nosuch` waited 30 s, then blamed the bridge."""
    line = one_line(cli("demo", "--task", "nosuch", "--out", tmp_path / "demo"))
    assert line.startswith("robot-imitation demo: unknown task 'nosuch'"), line
    assert "reach" in line and "push" in line  # the known tasks
    assert files_under(tmp_path) == []


def test_recording_into_a_dataset_of_another_spec_names_the_reason(tmp_path):
    """It showed only `service not available` after 35 s, while the recorder knew why."""
    from robot_imitation.recording.recorder import DatasetWriter
    from robot_imitation.spec import Spec

    ds = tmp_path / "ds"
    DatasetWriter(ds, Spec.load("reach"))
    before = {p: p.read_bytes() for p in ds.rglob("*")}
    line = one_line(cli("record", ds, "--task", "push", "--episodes", 1))
    assert line.startswith(f"robot-imitation record: {ds} holds episodes recorded with another "
                           "spec (reach"), line
    assert {p: p.read_bytes() for p in ds.rglob("*")} == before  # no logs: nothing started


def test_recording_into_a_folder_that_cannot_be_written(tmp_path):
    """It was an OSError traceback. A folder below a regular file can be written by nobody,
    root included."""
    (tmp_path / "file").write_text("")
    line = one_line(cli("record", tmp_path / "file" / "ds", "--task", "reach"))
    assert line.startswith(f"robot-imitation record: dataset folder {tmp_path / 'file' / 'ds'} "
                           "is not writable"), line
    assert files_under(tmp_path) == ["file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder (chmod "
                    "555); the folder-below-a-file case covers the error as root")
def test_recording_into_a_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        line = one_line(cli("record", ro / "ds", "--task", "reach"))
    finally:
        ro.chmod(0o755)
    assert line.startswith(f"robot-imitation record: dataset folder {ro / 'ds'} is not "
                           "writable"), line
    assert files_under(tmp_path) == ["ro"]


@pytest.mark.ros
def test_a_node_that_dies_is_reported_at_once_with_its_own_error(ros, procs, tmp_path):
    """While the caller waits for a node's service, a node that died is noticed (its last
    error line in the message), not a timeout after 30 s."""
    from robot_imitation.ros.launcher import ProcessDied
    from robot_imitation.nodes.episode_runner import EpisodeRunner, Spinner
    from robot_imitation.ros.pipelines import start_recording
    from robot_imitation.recording.recorder import DatasetWriter
    from robot_imitation.spec import Spec

    ds = tmp_path / "ds"
    DatasetWriter(ds, Spec.load("reach"))
    procs.start_node("episode_recorder", params={"dataset": str(ds), "spec": "push"})
    runner = EpisodeRunner()
    spinner = Spinner(runner)
    try:
        with pytest.raises(ProcessDied) as died:
            start_recording(runner, procs, timeout=60.0)
        assert "another spec" in died.value.summary, died.value.summary
        assert died.value.summary.startswith("episode_recorder exited with code 1: ")
        procs.stop("episode_recorder")
        procs.start_node("mujoco_bridge", params={"task": "nosuch"})
        with pytest.raises(ProcessDied) as died:
            runner.wait_for_bridge(60.0, alive=procs.check)
        assert died.value.summary.startswith("mujoco_bridge exited with code 1: ")
        assert "unknown task 'nosuch'" in died.value.summary, died.value.summary
    finally:
        spinner.stop()
        runner.destroy_node()


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "terminated")],
                         ids=["SIGINT", "SIGTERM"])
@pytest.mark.ros
def test_ctrl_c_ends_a_command_and_its_processes(tmp_path, sig, code, word):
    """Ctrl-C (SIGINT to the command) ends it with one line and exit code 130, and stops the
    processes it started, wherever it was; SIGTERM (a service manager, a CI timeout) the same
    way, with 143 (the children run in sessions of their own: no signal reaches them but the
    command's)."""
    out = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "robot_imitation.cli", "demo", "--task", "reach", "--mode",
         "realtime", "--episodes", "100", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a terminal's Ctrl-C reaches a foreground command whose SIGINT is not ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log = out / "logs" / "mujoco_bridge.log"
    try:
        # the command has started its processes (the bridge is up and logging), or ended
        deadline = time.monotonic() + 120
        while proc.poll() is None and not (log.is_file() and "mujoco_bridge" in log.read_text()):
            assert time.monotonic() < deadline, "the bridge did not start within 120 s"
            time.sleep(0.05)
        proc.send_signal(sig)
        stdout, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            stdout, err = proc.communicate()
            print(f"the command's output:\n{stdout}\n{err}")
    assert proc.returncode == code, (stdout, err)
    assert err.strip() == f"robot-imitation demo: {word}"
    left = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and str(out) in (p / "cmdline").read_text():
                left.append(p.name)
        except OSError:
            pass
    assert left == [], "processes of the command still running"


def test_a_mujoco_gl_that_cannot_be_used_is_one_line():
    """`MUJOCO_GL=osmesa` without its library (or a misspelled value): before, every command
    and node that simulates, rendering or not, printed MuJoCo's traceback (about 40 lines
    ending "AttributeError: 'NoneType' object has no attribute 'glGetError'"); now one line
    naming the value and what to use, exit 1."""
    import ctypes.util

    values = ["nonsense"] + ([] if ctypes.util.find_library("OSMesa") else ["osmesa"])
    for gl in values:
        # (without the PYOPENGL_PLATFORM that MuJoCo's EGL context put into this process's
        # environment: with it, MuJoCo skips an osmesa context it cannot make and imports)
        env = {**{k: v for k, v in os.environ.items() if k != "PYOPENGL_PLATFORM"},
               "MUJOCO_GL": gl}
        for argv, prefix in (
                (["-m", "robot_imitation.cli", "expert", "--task", "reach", "--episodes", "1"],
                 "robot-imitation: "),
                (["-m", "robot_imitation_entry", "mujoco_bridge", "--ros-args", "-p",
                  "task:=reach"], "[mujoco_bridge] ")):
            run = subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                                 timeout=120, env=env)
            assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
            lines = run.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(
                f"{prefix}MUJOCO_GL={gl}: MuJoCo cannot use this GL platform ("), run.stderr
            assert lines[0].endswith("use MUJOCO_GL=egl (or osmesa or glfw, with its library "
                                     "installed), or leave it unset"), lines[0]
