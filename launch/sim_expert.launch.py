"""Bridge and scripted expert: the simulated robot driven by its expert.

    ros2 launch robot_imitation sim_expert.launch.py task:=push mode:=lockstep

The nodes and their parameters are ``robot_imitation.ros.graphs.expert_graph``'s, the graph that
``robot-imitation demo`` starts.
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
    return graphs.expert_graph(arg("task"), value("mode"),
                               expert=graphs.flag("expert", value("expert")))


def generate_launch_description():
    from launch.actions import DeclareLaunchArgument

    return graphs.launch_description([
        DeclareLaunchArgument("task", default_value="push", description="task name"),
        DeclareLaunchArgument("mode", default_value="realtime", choices=["realtime", "lockstep"],
                              description="bridge timing: realtime or lockstep"),
        DeclareLaunchArgument("expert", default_value="true",
                              description="start the scripted expert"),
    ], nodes)
