"""The generative families through ROS as a user runs them: trained on recorded reach
demonstrations (`robot-imitation train --policy act|diffusion`), evaluated with `evaluate
--ros` against `--gym`. (A file of its own: with parallel workers it runs beside the DAgger
tests, not after them.)"""
import json

import pytest

from conftest import GENERATIVE_THRESHOLD
from test_dagger import run_cli

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def test_a_generative_policy_through_ros_reaches_and_equals_the_gymnasium(reach_generative,
                                                                         tmp_path):
    """act and diffusion, trained on the recorded reach demonstrations, evaluated the user's
    way: `evaluate --ros` (the bridge in lockstep, the policy node with its defaults: chunks
    executed in part, the next one computed ahead; the checkpoint's limits) reaches >= 90% of
    30 episodes (the small diffusion U-Net >= 80%), and `--gym` gives the same episodes, tick
    for tick."""
    family, run = reach_generative
    best = json.loads((run / "result.json").read_text())["best"]
    threshold = GENERATIVE_THRESHOLD[family]
    results = {}
    for way in ("ros", "gym"):
        proc = run_cli("evaluate", best, "--task", "reach", f"--{way}", "--episodes", 30,
                       "--threshold", threshold, "--out", tmp_path / f"{way}.json")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        results[way] = json.loads((tmp_path / f"{way}.json").read_text())
    ros, gym = results["ros"], results["gym"]
    print(f"\n{family} through ROS: {ros['successes']}/30")
    assert ros["success_rate"] >= threshold and ros["passed"]
    assert ros["per_episode"] == gym["per_episode"]
