"""The processes of a DAgger run in simulation: bridge (lockstep), scripted expert labelling
every state on /expert/..., policy node on /policy/..., the command mux forwarding one of them,
and the recorder keeping the spec's topics, the labels and the executed source. With
``variant:=gated`` (HG-DAgger, the default) the scripted supervisor holds the mux's
intervention button when the policy gets into trouble; with ``variant:=mixture`` the mux draws
the expert with probability ``beta``.

    ros2 launch robot_imitation dagger.launch.py checkpoint:=runs/bc/best_val task:=push
    ros2 service call /episode_recorder/start std_srvs/srv/Trigger
    ros2 run robot_imitation episode_runner --ros-args -p episodes:=10
    robot-imitation train datasets/dagger --sources expert ...   # gated: the expert's steps

`robot-imitation dagger` runs the whole loop (record, aggregate, retrain, hot-reload, evaluate)
over these same nodes: both take them from ``robot_imitation.ros.graphs.dagger_graph``.
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
    gated = value("variant") == "gated"
    return graphs.dagger_graph(arg("task"), arg("checkpoint"), spec=value("spec") or None,
                               dataset=arg("dataset"),
                               supervisor={} if gated else None,
                               mode="intervention" if gated else "mixture", beta=arg("beta"))


def generate_launch_description():
    from launch.actions import DeclareLaunchArgument

    return graphs.launch_description([
        DeclareLaunchArgument("checkpoint", description="the current policy"),
        DeclareLaunchArgument("task", default_value="push"),
        DeclareLaunchArgument("spec", default_value="",
                              description="the spec recorded and served (a spec's name or file; "
                                          "default: the task's)"),
        DeclareLaunchArgument("dataset", default_value="datasets/dagger",
                              description="where the DAgger episodes are recorded"),
        DeclareLaunchArgument("variant", default_value="gated", choices=["gated", "mixture"],
                              description="gated: HG-DAgger with the scripted supervisor; "
                                          "mixture: beta-mixture"),
        DeclareLaunchArgument("beta", default_value="0.5",
                              description="mixture: probability of the expert per step"),
    ], nodes)
