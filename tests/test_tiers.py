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


def inner_session(tmp_path: Path, source: str, *options: str,
                  env: dict | None = None) -> subprocess.CompletedProcess:
    shutil.copy(TESTS / "conftest.py", tmp_path)
    shutil.copy(TESTS.parent / "pytest.ini", tmp_path)
    (tmp_path / "test_inner.py").write_text(source)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA",
                           *options, "test_inner.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=env)


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


def test_tests_that_need_no_ros_run_where_rclpy_is_not_installed(tmp_path):
    """A GPU machine without ROS runs the tests that need none (``pytest tests/test_cuda.py``):
    the guard wraps nothing there. Here rclpy is hidden by a package of that name that cannot
    be imported."""
    import os

    hidden = tmp_path / "hidden"
    (hidden / "rclpy").mkdir(parents=True)
    (hidden / "rclpy" / "__init__.py").write_text("raise ImportError('no rclpy here')\n")
    inner = tmp_path / "inner"
    inner.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(hidden), os.environ.get("PYTHONPATH", "")) if p))
    proc = inner_session(inner, "import pytest\n\n\ndef test_no_rclpy():\n"
                                "    with pytest.raises(ImportError):\n"
                                "        import rclpy  # noqa: F401\n\n\n"
                                "def test_torch():\n    import torch\n"
                                "    assert torch.ones(2).sum() == 2\n", env=env)
    assert outcomes(proc.stdout) == {"test_no_rclpy": "PASSED", "test_torch": "PASSED"}, \
        proc.stdout[-5000:] + proc.stderr[-2000:]


def test_an_unregistered_marker_is_an_error(tmp_path):
    proc = inner_session(tmp_path, "import pytest\n\n\n@pytest.mark.rso\ndef test_typo():\n"
                                   "    pass\n")
    assert proc.returncode != 0
    assert "'rso' not found in `markers` configuration option" in proc.stdout + proc.stderr


SHARED = '''
import os
import time

import pytest

from conftest import made_once


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    def make(folder):
        time.sleep(1.0)  # both workers ask while the first is making it
        with open(os.environ["MAKES"], "a") as log:
            log.write(os.environ.get("PYTEST_XDIST_WORKER", "master") + "\\n")
        (folder / "value").write_text("made")
        return folder


    return made_once(tmp_path_factory, "data", make)


@pytest.fixture(scope="session")
def broken(tmp_path_factory):
    def make(folder):
        time.sleep(1.0)
        with open(os.environ["MAKES"], "a") as log:
            log.write("broken\\n")
        raise RuntimeError("cannot make it")

    return made_once(tmp_path_factory, "broken", make)


@pytest.mark.parametrize("i", range(4))
def test_uses_it(data, i):
    assert (data / "value").read_text() == "made"


@pytest.mark.parametrize("i", range(2))
def test_uses_the_broken_one(broken, i):
    pass
'''


def test_parallel_workers_make_a_session_fixture_once_and_share_its_failure(tmp_path,
                                                                            monkeypatch):
    """``make test`` runs two workers (pytest-xdist): the recordings and training runs of the
    session fixtures are made by one of them, and a failure to make one is not repeated. Both
    workers run every test here (``--dist each``), so both need both fixtures."""
    makes = tmp_path / "makes.txt"
    monkeypatch.setenv("MAKES", str(makes))
    proc = inner_session(tmp_path, SHARED, "-n", "2", "--dist", "each")
    found = outcomes(proc.stdout)
    assert [found.get(f"test_uses_it[{i}]") for i in range(4)] == ["PASSED"] * 4, \
        proc.stdout[-5000:] + proc.stderr[-2000:]
    assert [found.get(f"test_uses_the_broken_one[{i}]") for i in range(2)] == ["ERROR"] * 2
    lines = makes.read_text().split()
    assert sorted(lines)[0] == "broken" and lines.count("broken") == 1, lines
    assert len([w for w in lines if w.startswith("gw")]) == 1, lines
    assert "broken failed in another worker" in proc.stdout, proc.stdout[-5000:]
    assert proc.stdout.count("PASSED test_inner.py::test_uses_it") == 8
