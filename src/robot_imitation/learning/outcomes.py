"""Episode outcomes and their success rate with its 95% confidence interval.

Plain Python (no ROS): the gymnasium-side commands (``robot-imitation expert``, ``evaluate
--gym``) use it as well as the runs through ROS (``nodes.episode_runner``, ``dagger``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class EpisodeOutcome:
    episode: int
    seed: int
    success: bool
    ticks: int
    reward: float
    sim_time: float
    wall_time: float
    end_stamp: float = 0.0     # stamp of the episode's final state (s, bridge clock)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(outcomes: list) -> dict:
    """Episodes, successes, success rate with its 95% interval, mean length, and each
    episode's record (``EpisodeOutcome``s, or ``rollouts.EpisodeResult``s: seed, success,
    ticks, final reward) under ``per_episode``."""
    n = len(outcomes)
    k = sum(bool(o.success) for o in outcomes)
    lo, hi = wilson_interval(k, n)
    return {"episodes": n, "successes": k, "success_rate": k / n if n else 0.0,
            "ci95": [lo, hi],
            "mean_length": sum(o.ticks for o in outcomes) / n if n else 0.0,
            "per_episode": [o.to_dict() if hasattr(o, "to_dict") else asdict(o)
                            for o in outcomes]}
