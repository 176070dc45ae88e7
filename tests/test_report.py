"""The main job's report (``report.write_report``) says what was run: its rows named as the
run's log names them (HG-DAgger for the gated variant), the seed its rollout videos show, and
the inference backend as named, not measured. Real checkpoints, real MuJoCo renders, no ROS."""
import av
import pytest

from conftest import untrained_checkpoint
from robot_imitation.report import VIDEO_SEED, write_report
from robot_imitation.rollouts.base import EVAL_SEED, ROLLOUT_BACKEND

pytestmark = pytest.mark.slow  # three rollouts rendered (about 25 s)


def results(tmp_path, variant: str) -> dict:
    def row(i):
        ckpt = untrained_checkpoint(tmp_path / f"train_{i}" / "last", "reach")
        return {"iteration": i, "success_rate": 0.5, "ci95": [0.1, 0.9], "labels": 40 * (i + 1),
                "train_dir": str(tmp_path / f"train_{i}"), "checkpoint": str(ckpt),
                "beta": None, "expert_share": None if i == 0 else 0.3, "successes": 1,
                "episodes": 2, "latency": {"backend": ROLLOUT_BACKEND, "p50": 0.1}}

    return {"config": {"task": "reach", "variant": variant},
            "expert": {"episodes": 2, "successes": 2, "success_rate": 1.0, "ci95": [0.3, 1.0]},
            "iterations": [row(0), row(1)]}


def test_the_report_names_its_rows_video_seed_and_backend_truly(tmp_path):
    text = write_report(tmp_path, results(tmp_path, "gated"), log=lambda *a: None).read_text()
    assert "| BC |" in text and "| HG-DAgger 1 |" in text and "| DAgger 1 |" not in text
    assert VIDEO_SEED == EVAL_SEED + 1
    assert f"One episode per policy (evaluation seed {VIDEO_SEED}, the same for each)" in text
    assert "the first evaluation seed" not in text
    assert f"Inference backend: `{ROLLOUT_BACKEND}` (named for every run of the learning " \
           "loop, not chosen by measurement)." in text
    for name in ("expert", "bc", "dagger_1"):
        with av.open(str(tmp_path / f"rollout_{name}.mp4")) as video:
            assert sum(1 for _ in video.decode(video=0)) > 1, name
    mixture = tmp_path / "mixture"
    mixture.mkdir()
    text = write_report(mixture, results(mixture, "mixture"), videos=False).read_text()
    assert "| DAgger 1 |" in text and "HG-DAgger" not in text


def test_a_rollout_video_shows_every_state_at_the_control_rate(tmp_path):
    """The videos lacked the last state (the outcome: a 21-step episode gave 21 frames, states
    0-20) and played a 12.5 Hz task at 12 frames a second (``int(control_rate)``); a task
    given as a file was read as a spec ("unknown key 'robot' in the spec"), and the report was
    lost after the whole run."""
    import yaml

    from robot_imitation.paths import config_file
    from robot_imitation.report import rollout_video

    task = yaml.safe_load(config_file("tasks", "reach").read_text())
    task["control_rate"] = 12.5
    path = tmp_path / "slow_reach.yaml"
    path.write_text(yaml.safe_dump(task))
    info = rollout_video(tmp_path / "expert.mp4", str(path))
    with av.open(str(tmp_path / "expert.mp4")) as video:
        stream = video.streams.video[0]
        frames = sum(1 for _ in video.decode(video=0))
        assert stream.average_rate == 12.5
    assert frames == info["steps"] + 1 and info["steps"] > 1


def test_the_latency_table_holds_milliseconds_only(tmp_path):
    """Settings and counts (chunk_mode, chunks since the node started) were rows of the table
    headed "ms", said to be over the last run."""
    res = results(tmp_path, "gated")
    res["iterations"][-1]["latency"] = {
        "backend": "eager", "latency_p50_ms": "0.000", "compute_p50_ms": "0.642",
        "chunk_inference_p99_ms": "1.788", "chunk_mode": "first (auto)", "chunks": 600,
        "chunk_execute": 1}
    text = write_report(tmp_path, res, videos=False).read_text()
    table = text.split("| figure | ms |")[1].split("\n\n")[0]
    assert "| compute_p50 | 0.642 |" in table and "| chunk_inference_p99 | 1.788 |" in table
    assert "| chunks |" not in table and "chunk_mode" not in table
    assert ("Chunk execution and counts since the node started: chunk_execute 1, chunk_mode "
            "first (auto), chunks 600.") in text
