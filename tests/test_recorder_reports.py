"""A recorder's ~/start waits for the publishers of its topics to count its subscriptions
(matching is per side: a message published before the publisher's side matched never reaches the
bag). The suite's publishers say so on /diagnostics (``common.MatchedReport``), from shortly after
they come up; a start in between took such a publisher for one that never reports and began at
once (a CI run's bag lacked the first two states of a bridge started 20 ms before the start)."""
import threading
import time

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from std_msgs.msg import Float64MultiArray

from conftest import wait_for
from robot_imitation.nodes.common import COMMAND_QOS, MatchedReport
from test_recording import call, index

REPORT_AFTER = 0.5   # s from the start's call to the publisher's first report


@pytest.mark.ros
def test_start_waits_for_a_new_publishers_first_report(procs, probe, tmp_path):
    ds = tmp_path / "ds"
    procs.start_node("episode_recorder", params={"dataset": str(ds), "topics": ["/test/topic"],
                                                 "discovery_timeout": 30.0})
    node = probe.node
    wait_for(lambda: node.count_subscribers("/diagnostics") >= 1, 30,
             "the recorder's /diagnostics subscription", procs=procs)
    pub = node.create_publisher(Float64MultiArray, "/test/topic", COMMAND_QOS)
    diag = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
    answer = {}

    def start():
        answer["resp"] = call(probe, "start")
        answer["at"] = time.monotonic()

    starter = threading.Thread(target=start)
    starter.start()
    time.sleep(REPORT_AFTER)
    # the publisher's node reports from now on (a bridge coming up: its report timer starts
    # after its publishers)
    reporting = time.monotonic()
    MatchedReport(node, (pub,), diag)
    starter.join(35)
    assert answer["resp"].success, answer["resp"].message
    assert answer["at"] > reporting, \
        "~/start began before the publisher said it had matched the recorder"
    pub.publish(Float64MultiArray(data=[1.0]))
    assert call(probe, "stop").success
    wait_for(lambda: index(ds) and index(ds)[0]["status"] != "recording", 10, "the stop",
             procs=procs)
    assert index(ds)[0]["counts"]["/test/topic"] == 1
