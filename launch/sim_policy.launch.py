"""Simulation in the loop: the MuJoCo bridge and the policy node running a checkpoint.

    ros2 launch robot_imitation sim_policy.launch.py checkpoint:=runs/train/run_X/best_val task:=push
    ros2 run robot_imitation episode_runner --ros-args -p episodes:=20

mode:=lockstep (the default) runs as fast as the machine allows, deterministically; the policy
node answers every state (trigger state) on simulated time. mode:=realtime paces the physics by
the wall clock and the policy node commands on a timer at the control rate. The nodes and their
parameters are ``robot_imitation.ros.graphs.evaluation_graph``'s, the graph that
`robot-imitation evaluate --ros` starts (here with the cameras and the inference backend of the
parameter files).
"""
try:
    from robot_imitation.ros import graphs
except ImportError:  # ros2 launch's Python without the package's environment (a venv): the
    # checkout's graphs.py, by file (share/robot_imitation/launch links to the checkout)
    import importlib.util
    import sys
    from pathlib import Path

    _spec = importlib.util.spec_from_file_location(
        "robot_imitation_graphs",
        Path(__file__).resolve().parents[1] / "src" / "robot_imitation" / "ros" / "graphs.py")
    graphs = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(graphs)


def nodes(arg, value):
    """``arg(name)``: a launch argument as a substitution; ``value(name)``: its text."""
    return graphs.evaluation_graph(arg("task"), arg("checkpoint"), mode=value("mode"),
                                   cameras=None)


def generate_launch_description():
    from launch.actions import DeclareLaunchArgument

    return graphs.launch_description([
        DeclareLaunchArgument("checkpoint", description="checkpoint folder to run"),
        DeclareLaunchArgument("task", default_value="push", description="task to simulate"),
        DeclareLaunchArgument("mode", default_value="lockstep", choices=["lockstep", "realtime"],
                              description="lockstep or realtime"),
    ], nodes)
