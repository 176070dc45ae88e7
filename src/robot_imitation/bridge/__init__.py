"""The bridge core: what the MuJoCo bridge node does, without ROS."""
from .core import BridgeCore, CommandResult, EpisodeStatus

__all__ = ["BridgeCore", "CommandResult", "EpisodeStatus"]
