"""The ROS layer's plumbing (the nodes themselves are ``robot_imitation.nodes``):

- ``graph``: ``SimGraph``, a private ROS graph (a free domain, this host only, an rclpy
  context of its own) for each simulated run.
- ``graphs``: every process graph (recording rig, evaluation rig, DAgger rig, demo) declared
  once as data; the launcher and the launch files both start them.
- ``launcher``: ``ProcessGroup``, nodes started as processes and always cleaned up (the
  command line, the tests and the benchmarks; ``ros2 launch`` where installed).
- ``pipelines``: ``record_demonstrations`` (bridge, expert and recorder processes).
"""
