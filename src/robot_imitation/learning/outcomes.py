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


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(outcomes: list[EpisodeOutcome]) -> dict:
    """Episodes, successes, success rate, its 95% interval and the outcomes as dicts."""
    n = len(outcomes)
    k = sum(o.success for o in outcomes)
    lo, hi = wilson_interval(k, n)
    return {"episodes": n, "successes": k, "success_rate": k / n if n else 0.0,
            "ci95": [lo, hi], "outcomes": [asdict(o) for o in outcomes]}
