"""robot_imitation: ROS 2 nodes for imitation learning on robots (ament_python package)."""
import glob
import os

from setuptools import find_packages, setup

package_name = "robot_imitation"


def _tree(folder):
    """data_files entries that install `folder` under share/<package>/ keeping its layout."""
    entries = {}
    for path in glob.glob(os.path.join(folder, "**", "*"), recursive=True):
        if os.path.isfile(path):
            dest = os.path.join("share", package_name, os.path.dirname(path))
            entries.setdefault(dest, []).append(path)
    return sorted(entries.items())


setup(
    name=package_name,
    version="0.1.0",
    package_dir={"": "src"},
    packages=find_packages("src"),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        *_tree("launch"),
        *_tree("config"),
    ],
    install_requires=["setuptools", "numpy", "PyYAML", "mujoco", "gymnasium", "gymnasium-robotics",
                      "rosbags", "mcap", "matplotlib", "torch", "safetensors", "tensorboard",
                      "onnxruntime", "onnx", "av", "pyarrow"],
    python_requires=">=3.11",
    zip_safe=False,
    maintainer="robot_imitation developers",
    maintainer_email="robot-imitation@users.noreply.github.com",
    description="Imitation learning on robots with ROS 2: MuJoCo bridge, recorder, trainer, policy node.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "mujoco_bridge = robot_imitation.nodes.bridge_node:main",
            "scripted_expert = robot_imitation.nodes.expert_node:main",
            "episode_recorder = robot_imitation.nodes.recorder_node:main",
            "joy_teleop = robot_imitation.nodes.joy_teleop_node:main",
            "keyboard_teleop = robot_imitation.nodes.keyboard_teleop_node:main",
            "episode_runner = robot_imitation.nodes.episode_runner:main",
            "trainer = robot_imitation.nodes.trainer_node:main",
            "dagger_node = robot_imitation.nodes.dagger_node:main",
            "policy_node = robot_imitation.nodes.policy_node:main",
            "command_mux = robot_imitation.nodes.command_mux_node:main",
            "scripted_supervisor = robot_imitation.nodes.supervisor_node:main",
            "robot-imitation = robot_imitation.cli:main",
        ],
    },
)
