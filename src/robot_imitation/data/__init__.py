"""Demonstration data: rosbag2 bags in, time-aligned training arrays out.

- ``bags``: open a rosbag2 bag (MCAP or sqlite3, split or not) with errors naming bag and topic.
- ``dataset``: align a bag's messages to a spec (the alignment rule is in its docstring), build
  a dataset's episodes with a cache, the train/validation split and normalization statistics.
- ``inspect``: what a dataset holds, and a plot of one episode.
"""
from .bags import BagError, BagReader, TopicInfo, open_bag
from .dataset import (Dataset, DatasetError, Episode, FieldStats, build_dataset, build_episode,
                      compute_stats, split_episodes)
from .inspect import dataset_info, format_info, plot_episode

__all__ = ["BagError", "BagReader", "Dataset", "DatasetError", "Episode", "FieldStats",
           "TopicInfo", "build_dataset", "build_episode", "compute_stats", "dataset_info",
           "format_info", "open_bag", "plot_episode", "split_episodes"]
