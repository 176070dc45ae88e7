"""The parts documented to work without ROS never import rclpy.

Each check runs in its own process whose ``rclpy`` cannot be imported: a folder first on
PYTHONPATH holds an ``rclpy`` package that raises ImportError (message packages stay). The
command-line tests run the commands the way a user does (`python -m robot_imitation.cli`), with
tiny settings; the module test imports every module outside the ROS layer (``nodes``, the
launcher and the multi-process pipelines).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import robot_imitation
from conftest import untrained_checkpoint

BLOCKED = "rclpy is blocked for this test"
PACKAGE_DIR = Path(robot_imitation.__file__).parent
# The ROS layer: modules that import rclpy (or start processes that do) by design.
ROS_LAYER = ("robot_imitation.nodes", "robot_imitation.ros.launcher", "robot_imitation.ros.pipelines")
# Named here so that none of them can drop out of the walk unnoticed (a rename, a move).
MUST_BE_ROS_FREE = (
    "robot_imitation", "robot_imitation.cli", "robot_imitation.settings",
    "robot_imitation.spec", "robot_imitation.observation", "robot_imitation.ros.graph",
    "robot_imitation.paths", "robot_imitation.dagger", "robot_imitation.report",
    "robot_imitation.sim.env", "robot_imitation.sim.experts", "robot_imitation.sim.tasks",
    "robot_imitation.bridge.core", "robot_imitation.teleop.core",
    "robot_imitation.data.bags", "robot_imitation.data.dataset", "robot_imitation.data.inspect",
    "robot_imitation.learning.checkpoint", "robot_imitation.learning.evaluation",
    "robot_imitation.learning.outcomes", "robot_imitation.learning.policies",
    "robot_imitation.learning.trainer", "robot_imitation.learning.dagger_sim",
    "robot_imitation.deploy.backends", "robot_imitation.deploy.limits",
    "robot_imitation.deploy.mux", "robot_imitation.deploy.runtime",
    "robot_imitation.recording.bagwriter", "robot_imitation.recording.recorder",
    "robot_imitation.recording.recover", "robot_imitation.recording.timing",
    "robot_imitation.pairing", "robot_imitation.bridge.stepper", "robot_imitation.rollouts.base",
    "robot_imitation.rollouts.gym", "robot_imitation.algorithms.dagger",
    "robot_imitation.policies.registry")


@pytest.fixture(scope="module")
def no_rclpy_env(tmp_path_factory) -> dict:
    """The environment of a process in which `import rclpy` fails."""
    folder = tmp_path_factory.mktemp("blocked")
    (folder / "rclpy").mkdir()
    (folder / "rclpy" / "__init__.py").write_text(f"raise ImportError({BLOCKED!r})\n")
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path)


def run_blocked(env, *args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def test_the_block_holds(no_rclpy_env):
    """The blocked process really cannot import rclpy (else every test here proves nothing)."""
    proc = run_blocked(no_rclpy_env, "-c", "import rclpy")
    assert proc.returncode == 1 and BLOCKED in proc.stderr, proc.stderr


def ros_layer(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in ROS_LAYER)


def package_modules() -> list:
    names = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


def test_every_module_outside_the_ros_layer_imports_without_rclpy(no_rclpy_env):
    modules = [m for m in package_modules() if not ros_layer(m)]
    missing = sorted(set(MUST_BE_ROS_FREE) - set(modules))
    assert not missing, f"modules that should exist and be ROS-free: {missing}"
    code = ("import importlib, json, sys\n"
            "failed = {}\n"
            f"for name in {modules!r}:\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except BaseException as exc:\n"
            "        failed[name] = f'{type(exc).__name__}: {exc}'\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'rclpy')\n"
            "print(json.dumps({'failed': failed, 'rclpy': loaded}))\n")
    proc = run_blocked(no_rclpy_env, "-c", code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result == {"failed": {}, "rclpy": []}, result


def test_the_episode_runner_keeps_the_outcome_names():
    """Its users import the outcome statistics from the node module as before."""
    from robot_imitation.learning import outcomes
    from robot_imitation.nodes import episode_runner

    for name in ("EpisodeOutcome", "summarize", "wilson_interval"):
        assert getattr(episode_runner, name) is getattr(outcomes, name)


# --------------------------------------------------------------------------- the commands
@pytest.fixture(scope="module")
def push_dataset(tmp_path_factory):
    """Two short scripted-expert push episodes as recorded bags (written without ROS)."""
    from test_dataset import run_expert, write_dataset

    from robot_imitation.sim.env import ImitationEnv
    from robot_imitation.sim.experts import make_expert

    env = ImitationEnv("push")
    try:
        expert = make_expert(env.sim)
        rollouts = [run_expert(env, expert, seed, max_steps=20) for seed in range(2)]
    finally:
        env.close()
    return write_dataset(tmp_path_factory.mktemp("data") / "push_demos", rollouts, ["ok", "ok"])


@pytest.fixture(scope="module")
def reach_checkpoint(tmp_path_factory):
    return untrained_checkpoint(tmp_path_factory.mktemp("reach") / "ckpt", "reach")


# command line (placeholders: {dataset}, {checkpoint}, {tmp}) -> what its output must show
COMMANDS = {
    "help": (["--help"], r"usage: robot-imitation"),
    "tasks": (["tasks"], r"reach +robot=panda"),
    "expert": (["expert", "--task", "reach", "--episodes", "2"],
               r"reach: expert success \d/2"),
    "info": (["info", "{dataset}"], r"episode_000001"),
    "plot": (["plot", "{dataset}", "0", "--out", "{tmp}/ep0.png"], r"wrote .*ep0\.png"),
    "train": (["train", "{dataset}", "--out", "{tmp}/run", "--steps", "3", "--eval-every", "0",
               "--eval-episodes", "0", "--device", "cpu", "--seed", "0"],
              r"\[train\] 3 steps on cpu"),
    "evaluate-gym": (["evaluate", "{checkpoint}", "--gym", "--task", "reach", "--episodes", "2",
                      "--out", "{tmp}/eval.json"],
                     r"\[evaluate\] .* on reach \(gymnasium\): success \d/2"),
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_command_without_ros_runs_where_rclpy_cannot_be_imported(
        name, no_rclpy_env, push_dataset, reach_checkpoint, tmp_path):
    argv, shows = COMMANDS[name]
    argv = [a.format(dataset=push_dataset, checkpoint=reach_checkpoint, tmp=tmp_path)
            for a in argv]
    proc = run_blocked(no_rclpy_env, "-m", "robot_imitation.cli", *argv, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert BLOCKED not in out, out[-3000:]
    assert proc.returncode == 0, out[-3000:]
    assert re.search(shows, proc.stdout), proc.stdout[-3000:]
