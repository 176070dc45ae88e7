"""Layouts and physics a task file sets up: a ``push_obstacle`` task file no layout fits is
refused when it is loaded, in one line naming the file and the parameters (it loaded, and the
first reset died on ``RuntimeError: push_obstacle: no layout fits the box in 1000 draws``, the
bridge node with it); a robot MJCF's own timestep, replaced by the task's, is told (it was
replaced without a word)."""
import dataclasses

import numpy as np
import pytest
import yaml

from robot_imitation.paths import config_dir
from robot_imitation.sim.robot import ModelError
from robot_imitation.sim.tasks import TaskConfig, TaskSim
from test_task_files import ARM, ARM_ROBOT, expert_refusal, task_file, write

PUSH_OBSTACLE = yaml.safe_load((config_dir() / "tasks" / "push_obstacle.yaml").read_text())

NO_LAYOUT = [  # (change, words the line holds besides the goal box)
    # a goal box too small for the goal and the lanes beside the puck and the wall
    ({"goal_low": [0.55, -0.02], "goal_high": [0.6, 0.02]}, ("[0.55, -0.02]", "[0.6, 0.02]")),
    # goals always beyond the box's far edge
    ({"goal_distance": [0.8, 0.9]}, ("goal_distance [0.8, 0.9]", "out of it: the goal in 1000")),
    # lanes beside the puck wider than the box
    ({"route_margin": 0.3},
     ("route clearance 0.38", "route_margin", "a lane beside the puck in 1000")),
]


def push_obstacle_file(tmp_path, change):
    return write(tmp_path / "push_obstacle_x.yaml", {**PUSH_OBSTACLE, **change})


@pytest.mark.parametrize("change,words", NO_LAYOUT, ids=[str(c) for c, _ in NO_LAYOUT])
def test_a_push_obstacle_task_no_layout_fits_is_refused_at_load(tmp_path, change, words):
    path = push_obstacle_file(tmp_path, change)
    with pytest.raises(ModelError) as error:
        TaskConfig.load(path)
    text = str(error.value)
    assert "\n" not in text and text.startswith(f"{path}: no layout of push_obstacle fits: "), \
        text
    for word in ("goal_low", "goal_high", "goal_distance", "goal_direction", "puck_low",
                 "obstacle_jitter", "route clearance", "in all of 1000 draws (seeded", *words):
        assert word in text, (word, text)


def test_the_cli_refuses_a_push_obstacle_task_no_layout_fits_in_one_line(tmp_path):
    path = push_obstacle_file(tmp_path, NO_LAYOUT[0][0])
    line = expert_refusal(path)
    assert line.startswith(f"robot-imitation expert: {path}: no layout of push_obstacle fits: "), \
        line


def test_a_reset_no_layout_fits_is_a_model_error_in_one_line():
    """A task no layout fits that is not read from a file (a TaskConfig made in code) is
    refused at its reset as a ModelError naming the task, not a RuntimeError."""
    cfg = TaskConfig.load("push_obstacle")
    cfg = dataclasses.replace(cfg, params={**cfg.params, **NO_LAYOUT[0][0]})
    sim = TaskSim(cfg)
    with pytest.raises(ModelError) as error:
        sim.reset(seed=3)
    text = str(error.value)
    assert "\n" not in text, text
    assert text.startswith("task 'push_obstacle': no layout of push_obstacle fits: "), text
    assert "in all of 1000 draws (at this reset; out of it: " in text, text


# puck, goal, wall and route positions (x y z) of the built-in push_obstacle task reset with
# seed 0, as drawn before the check at load was added
SEED_0_LAYOUT = [0.5028885131905083, -0.11193946192668855, 0.02,
                 0.6252868906817352, 0.13658048984340423, 0.001,
                 0.5672969656701139, 0.01883666298530407, 0.03,
                 0.6659778566654265, -0.029764589594966265, 0.02]


def test_a_push_obstacle_task_some_layout_fits_loads_and_resets_as_before(tmp_path):
    """A narrower goal box that still fits layouts loads; the built-in task's layouts for a
    seed are those it drew before the check was added (the suite's seeded results compare
    across sessions: the draws' number and order are kept)."""
    path = push_obstacle_file(tmp_path, {"goal_high": [0.66, 0.28]})
    sim = TaskSim(TaskConfig.load(path))
    sim.reset(seed=1)
    assert np.all(sim.observe()["goal_pose"][:2] <= [0.66, 0.28])
    sim = TaskSim("push_obstacle")
    sim.reset(seed=0)
    obs = sim.observe()
    seen = np.concatenate([obs[k][:3] for k in ("object_pose", "goal_pose", "obstacle_pose",
                                                "route_pose")])
    np.testing.assert_allclose(seen, SEED_0_LAYOUT, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- timestep
def arm_task(tmp_path, mjcf_timestep, change: dict = ()):
    """A reach task on the two-joint arm of test_task_files, its MJCF setting
    ``mjcf_timestep`` (None: no <option>)."""
    option = '  <option timestep="0.002"/>\n'
    assert option in ARM
    xml = ARM.replace(option, "" if mjcf_timestep is None
                      else f'  <option timestep="{mjcf_timestep}"/>\n')
    (tmp_path / "arm.xml").write_text(xml)
    robot = write(tmp_path / "robot.yaml", ARM_ROBOT)
    return task_file(tmp_path, {"robot": str(robot), "target_low": [0.1, -0.3, 0.05],
                                "target_high": [0.5, 0.3, 0.2], **dict(change)})


def test_a_robot_mjcf_timestep_the_task_replaces_is_told(tmp_path):
    """The task's physics_timestep is used (the control tick's substeps count on it), and
    the robot file's own timestep it replaced is said in one line."""
    sim = TaskSim(TaskConfig.load(arm_task(tmp_path, 0.0005)))
    assert sim.model.opt.timestep == 0.002 and sim.substeps == 25
    assert sim.replaced_timestep == (0.0005, 0.002)
    assert len(sim.notes) == 1 and "\n" not in sim.notes[0], sim.notes
    for word in ("robot 'arm'", str(tmp_path / "arm.xml"), "timestep 0.0005 s",
                 "physics_timestep 0.002 s", "500 Hz"):
        assert word in sim.notes[0], (word, sim.notes)


@pytest.mark.parametrize("mjcf_timestep,change", [
    (None, {}),                                  # the MJCF sets none
    (0.002, {}),                                 # the same as the task's
    (0.001, {"physics_timestep": 0.001}),        # the task takes the robot's
])
def test_a_robot_mjcf_timestep_kept_or_unset_is_not_told(tmp_path, mjcf_timestep, change):
    sim = TaskSim(TaskConfig.load(arm_task(tmp_path, mjcf_timestep, change)))
    assert sim.model.opt.timestep == change.get("physics_timestep", 0.002)
    assert sim.replaced_timestep is None and sim.notes == []
    assert TaskSim("reach").notes == []  # the built-in robot sets MuJoCo's default


def test_a_push_obstacle_variant_is_a_push_obstacle_task(tmp_path):
    """A variant named ``push_obstacle_<x>`` runs push_obstacle's logic and expert and is
    observed with its spec: it fell back to the part before the first ``_``, a ``push`` (its
    obstacle keys refused as unknown to push; one with push's keys only would have run push)."""
    from robot_imitation.sim.experts import PushObstacleExpert, make_expert
    from robot_imitation.sim.tasks import PushObstacleLogic
    from robot_imitation.spec import task_spec_name

    path = write(tmp_path / "mine.yaml", {**PUSH_OBSTACLE, "name": "push_obstacle_x",
                                          "max_steps": 150})
    cfg = TaskConfig.load(path)
    sim = TaskSim(cfg)
    assert isinstance(sim.logic, PushObstacleLogic)
    assert isinstance(make_expert(sim), PushObstacleExpert)
    assert task_spec_name(path) == "push_obstacle"
    sim.reset(seed=3)
    assert "obstacle_pose" in sim.observe()

    from robot_imitation.settings import name_prefixes

    assert name_prefixes("push_obstacle_x") == ["push_obstacle_x", "push_obstacle", "push"]


def test_training_data_names_the_task_of_its_spec(tmp_path):
    """The task a dataset trains for (its closed-loop evaluation) is the longest part of the
    spec's name that is a task: push_obstacle's spec is push_obstacle's (it was push's: the part
    before the first ``_``), push_image's push's."""
    from robot_imitation.data.dataset import Dataset
    from robot_imitation.learning.trainer import _infer_task
    from robot_imitation.spec import Spec

    def data(spec_name):
        return Dataset(path=tmp_path, spec=Spec.load(spec_name), episodes=[], train=[], val=[],
                       stats={})

    assert _infer_task(data("push_obstacle")) == "push_obstacle"
    assert _infer_task(data("push_image")) == "push"
    assert _infer_task(data("reach")) == "reach"
