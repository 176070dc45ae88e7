"""Record demonstrations in simulation: bridge, scripted expert (or joystick teleop), recorder.

    ros2 launch robot_imitation sim_record.launch.py task:=push dataset:=datasets/push
    ros2 launch robot_imitation sim_record.launch.py teleop:=joy   # a person drives instead

Episodes are started and stopped through the recorder's services (~/start, ~/stop, ~/discard),
or with the teleop's buttons; `robot-imitation record` automates it for the scripted expert.
The nodes and their parameters are ``robot_imitation.ros.graphs.record_graph``'s, the graph that
`robot-imitation record` starts (here in real time, episodes ended by hand).
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
    return graphs.record_graph(arg("task"), arg("dataset"), spec=value("spec") or None,
                               mode="realtime", auto_stop=False, teleop=value("teleop"))


def generate_launch_description():
    from launch.actions import DeclareLaunchArgument

    return graphs.launch_description([
        DeclareLaunchArgument("task", default_value="push", description="task name"),
        DeclareLaunchArgument("dataset", default_value="datasets/demos",
                              description="dataset folder"),
        DeclareLaunchArgument("spec", default_value="",
                              description="what is recorded (a spec's name or file; default: "
                                          "the task's)"),
        DeclareLaunchArgument("teleop", default_value="none", choices=["none", "joy"],
                              description="none (scripted expert) or joy (joystick teleop)"),
    ], nodes)
