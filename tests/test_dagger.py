"""DAgger end to end through ROS (short), its labels, and `evaluate` as a CI gate."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mcap_ros2.reader import read_ros2_messages

from conftest import untrained_checkpoint

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def run_cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "robot_imitation.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def test_one_dagger_iteration_end_to_end(tmp_path):
    """Expert demonstrations, BC, one DAgger iteration (beta 0.5): the recorded steps carry the
    expert's labels for the states the mixture visited, and the policy is retrained on them.
    (`robot-imitation dagger`, as a user runs it, in its own process.)"""
    from robot_imitation.dagger import label_spec
    from robot_imitation.data.dataset import build_dataset
    from robot_imitation.sim.experts import make_expert
    from robot_imitation.sim.tasks import TaskSim
    from robot_imitation.spec import Spec

    proc = run_cli("dagger", "--task", "reach", "--out", tmp_path, "--bc-episodes", 4,
                   "--iterations", 1, "--episodes-per-iteration", 4, "--variant", "mixture",
                   "--schedule", "constant",
                   "--beta0", 0.5, "--eval-episodes", 3, "--seed", 7, "--steps", 300,
                   "--device", "cpu")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "dagger.json").read_text())
    assert [r["iteration"] for r in res["iterations"]] == [0, 1]
    bc, dagger = res["iterations"]
    assert dagger["labels"] > bc["labels"] > 0 and dagger["beta"] == 0.5
    assert res["expert"]["success_rate"] == 1.0
    assert Path(dagger["checkpoint"]).is_dir()

    # labels: every recorded step's action is the expert's answer to that step's observation
    data = build_dataset(tmp_path / "data" / "dagger", spec=label_spec(Spec.load("reach")),
                         cache=False)
    expert = make_expert(TaskSim("reach"))
    steps = [(ep.obs, i, ep.actions[i]) for ep in data.episodes for i in range(len(ep))]
    agree = sum(np.allclose(expert.plan({k: v[i] for k, v in obs.items()}), a, atol=1e-9)
                for obs, i, a in steps)
    assert len(steps) > 40 and agree / len(steps) >= 0.99, (agree, len(steps))
    # and the mixture executed both sources, and something other than the labels
    executed, differing = [], 0
    for ep in data.episodes:
        mcap = next(Path(ep.source).glob("*.mcap"))
        executed += [m.ros_msg.data for m in read_ros2_messages(
            str(mcap), topics=["/command_mux/source"])]
        arm = [np.array(m.ros_msg.data) for m in read_ros2_messages(
            str(mcap), topics=["/arm_controller/commands"])]
        labels = [np.array(m.ros_msg.data) for m in read_ros2_messages(
            str(mcap), topics=["/expert/arm_controller/commands"])]
        differing += sum(not np.allclose(a, b) for a, b in zip(arm, labels))
    assert {"expert", "policy"} <= set(executed)
    assert differing > 0, "the executed commands were the labels: the policy never drove"


def test_one_hg_dagger_iteration_end_to_end(tmp_path):
    """The gated variant (the default): the scripted supervisor holds the mux's intervention
    button; every step it held was driven by the expert, and only those steps became labels."""
    from robot_imitation.dagger import label_spec
    from robot_imitation.data.dataset import build_dataset
    from robot_imitation.sim.experts import make_expert
    from robot_imitation.sim.tasks import TaskSim
    from robot_imitation.spec import Spec

    proc = run_cli("dagger", "--task", "reach", "--out", tmp_path, "--bc-episodes", 3,
                   "--iterations", 1, "--episodes-per-iteration", 3, "--hold", 5,
                   "--patience", 10, "--eval-episodes", 2, "--seed", 3, "--steps", 200,
                   "--device", "cpu")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "dagger.json").read_text())
    bc, hg = res["iterations"]
    assert res["config"]["variant"] == "gated" and hg["variant"] == "gated"
    assert hg["beta"] is None and 0.0 < hg["expert_share"] < 1.0, hg

    spec = label_spec(Spec.load("reach"))
    whole = build_dataset(tmp_path / "data" / "dagger", spec=spec, cache=False)
    kept = build_dataset(tmp_path / "data" / "dagger", spec=spec, cache=False,
                         sources=["expert"])
    driven = sum(int((e.executed == "expert").sum()) for e in whole.episodes)
    steps = sum(len(e) for e in whole.episodes)
    assert hg["expert_share"] == pytest.approx(driven / steps)
    assert sum(len(e) for e in kept.episodes) == driven == hg["labels"] - bc["labels"]
    expert = make_expert(TaskSim("reach"))
    for ep in kept.episodes:
        for i in range(len(ep)):
            np.testing.assert_allclose(expert.plan({k: v[i] for k, v in ep.obs.items()}),
                                       ep.actions[i], atol=1e-9)
    # the recorded button (a Joy per state, stamped like it) says who drove each step
    for ep in whole.episodes:
        mcap = next(Path(ep.source).glob("*.mcap"))
        joys = [(m.ros_msg.header.stamp.sec + m.ros_msg.header.stamp.nanosec * 1e-9,
                 bool(m.ros_msg.buttons[5])) for m in read_ros2_messages(str(mcap),
                                                                          topics=["/joy"])]
        stamps = np.array([t for t, _ in joys])
        nearest = np.abs(stamps[None, :] - ep.t[:, None]).argmin(axis=1)
        assert np.abs(stamps[nearest] - ep.t).max() < 0.01
        assert [joys[j][1] for j in nearest] == [x == "expert" for x in ep.executed]


@pytest.fixture(scope="module")
def bad_checkpoint(tmp_path_factory):
    """A policy of the right shape that has learnt nothing (random weights)."""
    return untrained_checkpoint(tmp_path_factory.mktemp("bad") / "ckpt", "reach")


def test_evaluate_gates_on_the_success_rate(reach_bc, bad_checkpoint, tmp_path):
    best = json.loads((reach_bc / "result.json").read_text())["best"]
    good = run_cli("evaluate", best, "--task", "reach", "--gym", "--episodes", 20,
                   "--threshold", 0.8, "--out", tmp_path / "good.json")
    assert good.returncode == 0, good.stdout + good.stderr
    result = json.loads((tmp_path / "good.json").read_text())
    assert result["passed"] and result["success_rate"] >= 0.8 and len(result["ci95"]) == 2
    bad = run_cli("evaluate", bad_checkpoint, "--task", "reach", "--gym", "--episodes", 10,
                  "--threshold", 0.5, "--out", tmp_path / "bad.json")
    assert bad.returncode == 3, bad.stdout + bad.stderr
    assert "FAIL" in bad.stdout and not json.loads((tmp_path / "bad.json").read_text())["passed"]
    # a checkpoint for another task's spec is an error (exit 1), not a low score
    wrong = run_cli("evaluate", best, "--task", "push", "--spec", "push", "--gym")
    assert wrong.returncode == 1 and "does not match the runtime spec" in wrong.stderr


def test_evaluate_through_ros_equals_the_gymnasium_evaluation(reach_bc, tmp_path):
    """`evaluate --ros` and `--gym` as a user runs them: the same success count, and the same
    seed, success, ticks and final reward for every episode in the JSON each writes."""
    best = json.loads((reach_bc / "result.json").read_text())["best"]
    results = {}
    for way in ("ros", "gym"):
        proc = run_cli("evaluate", best, "--task", "reach", f"--{way}", "--episodes", 10,
                       "--threshold", 0.8, "--out", tmp_path / f"{way}.json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        results[way] = json.loads((tmp_path / f"{way}.json").read_text())
        assert f"success {results[way]['successes']}/10" in proc.stdout
    ros, gym = results["ros"], results["gym"]
    assert ros["through"] == "ros" and ros["episodes"] == 10
    assert float(ros["policy_node"]["latency_p50_ms"]) >= 0.0
    assert [e["seed"] for e in ros["per_episode"]] == list(range(500_000, 500_010))
    assert set(ros["per_episode"][0]) == {"seed", "success", "ticks", "reward"}
    assert ros["per_episode"] == gym["per_episode"]
    assert ros["successes"] == gym["successes"]


def test_main_job_in_a_reduced_configuration(tmp_path):
    """`robot-imitation pipeline` (the README's first command) with few episodes, its policy
    family chosen with --policy (act, small; mlp by default: the same code path): the report,
    its plots and one playable MP4 per policy."""
    policy = ["--policy", "act", "--policy-option", "dim_model=32", "--policy-option", "heads=2"]
    import av

    out = tmp_path / "pipeline"
    proc = run_cli("pipeline", "--task", "reach", "--out", out, "--bc-episodes", 3,
                   "--iterations", 1, "--episodes-per-iteration", 2, "--eval-episodes", 2,
                   "--steps", 200, "--device", "cpu", *policy)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trained = json.loads((out / "train_1" / "last" / "policy.json").read_text())
    assert trained["type"] == "act"
    report = (out / "report.md").read_text()
    for row in ("| expert |", "| BC |", "| HG-DAgger 1 |", "success.png", "loss.png",
                "rollout_dagger_1.mp4", "latency"):
        assert row in report, row
    assert (out / "success.png").stat().st_size > 1000 and (out / "loss.png").is_file()
    for name in ("expert", "bc", "dagger_1"):
        with av.open(str(out / f"rollout_{name}.mp4")) as video:
            frames = sum(1 for _ in video.decode(video=0))
        assert frames > 5, name


def test_aggregated_training_data_says_what_it_skipped(reach_demos, tmp_path):
    """DAgger's aggregation leaves out what the dataset builder leaves out, and says so (the
    summary the trainer stores with each checkpoint), naming each part's skipped episodes."""
    from robot_imitation.dagger import aggregate
    from robot_imitation.spec import Spec

    part = tmp_path / "part"
    part.mkdir()
    (part / "dataset.yaml").write_text((reach_demos / "dataset.yaml").read_text())
    index = json.loads((reach_demos / "index.json").read_text())
    entries = index["episodes"][:3]
    for entry in entries:
        (part / entry["path"]).symlink_to(reach_demos / entry["path"])
    entries[1] = {**entries[1], "status": "interrupted"}
    entries[2] = {**entries[2], "status": "failed"}
    (part / "index.json").write_text(json.dumps({**index, "episodes": entries}))
    spec = Spec.load("reach")
    data = aggregate([(part, spec, None)], spec, val_fraction=0.0)
    assert [e.name for e in data.episodes] == [entries[0]["name"]]
    assert data.summary["used"] == [f"part/{entries[0]['name']}"]
    assert sorted(n for names in data.summary["skipped"].values() for n in names) == \
        [f"part/{entries[1]['name']}", f"part/{entries[2]['name']}"]
    assert "skipped 2" in data.describe()
    # asked for, the interrupted episode is used
    data = aggregate([(part, spec, None)], spec, val_fraction=0.0, include_interrupted=True)
    assert [e.name for e in data.episodes] == [entries[0]["name"], entries[1]["name"]]
