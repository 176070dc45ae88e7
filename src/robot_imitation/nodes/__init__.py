"""ROS 2 nodes: thin adapters between topics/services/parameters and the plain cores."""
