"""The test tiers stay honest: a test not marked ``ros`` that makes an rclpy context or starts a
process through the launcher fails (tests/conftest.py), a ``ros`` test runs with those functions
untouched, and a marker that is not registered is an error.

Each check runs a small test file of its own in a separate pytest session, with this suite's
conftest.py and pytest.ini. No DDS: the ROS calls are refused at once by rclpy (an unknown ROS
argument, a negative domain id), and the process started is a plain Python one.
"""
import shutil
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

INNER = '''
import sys

import pytest


def test_an_rclpy_context_unmarked():
    import rclpy
    from rclpy.context import Context

    with pytest.raises(Exception):
        rclpy.init(args=["--ros-args", "--no-such-flag"], context=Context())


def test_a_context_init_unmarked():
    from rclpy.context import Context

    with pytest.raises(RuntimeError):
        Context().init(domain_id=-1)


def test_a_process_started_unmarked(tmp_path):
    from robot_imitation.ros.launcher import ProcessGroup

    with ProcessGroup(tmp_path / "logs") as group:
        group.start("plain", [sys.executable, "-c", "pass"]).wait(30)


@pytest.fixture(scope="session")
def started(tmp_path_factory):
    from robot_imitation.ros.launcher import ProcessGroup

    with ProcessGroup(tmp_path_factory.mktemp("logs")) as group:
        group.start("plain", [sys.executable, "-c", "pass"]).wait(30)
    return True


def test_a_session_fixture_that_starts_a_process_unmarked(started):
    pass


def test_plain_unmarked():
    assert 1 + 1 == 2


@pytest.mark.ros
def test_marked_ros_sees_the_functions_untouched(tmp_path):
    import rclpy
    from rclpy.context import Context

    from robot_imitation.ros.launcher import ProcessGroup

    for f in (rclpy.init, Context.init, ProcessGroup.start):
        assert not hasattr(f, "__wrapped__"), f
    with pytest.raises(Exception):
        rclpy.init(args=["--ros-args", "--no-such-flag"], context=Context())
    with ProcessGroup(tmp_path / "logs") as group:
        group.start("plain", [sys.executable, "-c", "pass"]).wait(30)
'''


def inner_session(tmp_path: Path, source: str) -> subprocess.CompletedProcess:
    shutil.copy(TESTS / "conftest.py", tmp_path)
    shutil.copy(TESTS.parent / "pytest.ini", tmp_path)
    (tmp_path / "test_inner.py").write_text(source)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA",
                           "test_inner.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)


def outcomes(stdout: str) -> dict:
    """{test name: PASSED/FAILED/ERROR} from pytest's -rA summary."""
    found = {}
    for line in stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("PASSED", "FAILED", "ERROR") and rest.startswith("test_inner.py::"):
            found[rest.split("::")[1].split(" ")[0]] = word
    return found


def test_the_guard_fails_tests_not_marked_ros_that_reach_ros(tmp_path):
    proc = inner_session(tmp_path, INNER)
    assert outcomes(proc.stdout) == {
        "test_an_rclpy_context_unmarked": "FAILED",
        "test_a_context_init_unmarked": "FAILED",
        "test_a_process_started_unmarked": "FAILED",
        # the session fixture's start is this test's setup: an error there
        "test_a_session_fixture_that_starts_a_process_unmarked": "ERROR",
        "test_plain_unmarked": "PASSED",
        "test_marked_ros_sees_the_functions_untouched": "PASSED",
    }, proc.stdout[-5000:] + proc.stderr[-2000:]
    assert proc.returncode == 1
    out = proc.stdout
    assert "test_inner.py::test_an_rclpy_context_unmarked is not marked `ros` but its call " \
           "reached a ROS graph" in out, out[-5000:]
    assert "rclpy.init called at " in out and "rclpy.Context.init called at " in out
    assert "ProcessGroup.start called at " in out
    assert "test_a_session_fixture_that_starts_a_process_unmarked is not marked `ros` but its " \
           "setup reached a ROS graph" in out


def test_an_unregistered_marker_is_an_error(tmp_path):
    proc = inner_session(tmp_path, "import pytest\n\n\n@pytest.mark.rso\ndef test_typo():\n"
                                   "    pass\n")
    assert proc.returncode != 0
    assert "'rso' not found in `markers` configuration option" in proc.stdout + proc.stderr
