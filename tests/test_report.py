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
