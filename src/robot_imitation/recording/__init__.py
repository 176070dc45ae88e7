"""Recording episodes into rosbag2 bags, and recovering the bag of an interrupted episode."""
