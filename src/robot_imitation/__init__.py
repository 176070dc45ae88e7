"""robot_imitation: imitation learning on robots with ROS 2.

Plain cores (``sim``, ``bridge``) hold the logic and work without a ROS graph; ``nodes`` holds the
thin ROS 2 adapters around them.
"""

__version__ = "0.1.0"
