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
    py_modules=["robot_imitation_entry"],  # the executables (it imports the package lazily)
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
            "mujoco_bridge = robot_imitation_entry:mujoco_bridge",
            "scripted_expert = robot_imitation_entry:scripted_expert",
            "episode_recorder = robot_imitation_entry:episode_recorder",
            "joy_teleop = robot_imitation_entry:joy_teleop",
            "keyboard_teleop = robot_imitation_entry:keyboard_teleop",
            "episode_runner = robot_imitation_entry:episode_runner",
            "trainer = robot_imitation_entry:trainer",
            "dagger_node = robot_imitation_entry:dagger_node",
            "policy_node = robot_imitation_entry:policy_node",
            "command_mux = robot_imitation_entry:command_mux",
            "scripted_supervisor = robot_imitation_entry:scripted_supervisor",
            "container = robot_imitation_entry:container",
            "robot-imitation = robot_imitation_entry:robot_imitation",
        ],
    },
)
