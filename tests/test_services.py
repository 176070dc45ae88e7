"""A node's service answer waits for the calling client's discovery.

A client can see a server, and send it a request, before the server has discovered the client's
response reader (discovery is not symmetric). Fast DDS's RMW then holds the answer for its
response writer's max_blocking_time, 100 ms by default, and drops it: the client waits forever.
Fresh-clone CI runs lost first answers of freshly started nodes this way (the recorder's
``~/start``, the trainer's ``set_parameters``: "failed to send response (timeout)"). The suite's
default Fast DDS profile (``config/fastdds/services.xml``) lets an answer wait 5 s.

The test makes the late discovery certain: a client whose response reader asks for durability
the server's response writer does not offer is never matched, so the node waits its whole
max_blocking_time for it before taking the next request. A second, ordinary client's answer
shows how long that was: about 5 s with the suite's profile, 0.1 s under Fast DDS's defaults."""
import time

import pytest
from rcl_interfaces.srv import GetParameters
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

pytestmark = pytest.mark.ros

NEVER_MATCHED = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)


def answer_delay_after_an_unmatched_client(procs, probe, tmp_path, node: str) -> float:
    procs.start_node("episode_recorder", name=node,
                     params={"dataset": str(tmp_path / "ds"), "topics": ["/test/joints"]})
    service = f"/{node}/get_parameters"
    request = GetParameters.Request(names=["dataset"])
    probe.call(GetParameters, service, request)  # the node is up and answers
    late = probe.node.create_client(GetParameters, service, qos_profile=NEVER_MATCHED)
    for _ in range(5):  # (its wait_for_service never ends: it checks the response reader too)
        time.sleep(1.0)  # the node discovers the late client's request writer
        start = time.monotonic()
        late.call_async(request)
        time.sleep(0.3)  # the late request first
        probe.call(GetParameters, service, request)
        delay = time.monotonic() - start
        if delay > 3.0 or "failed to send response" in procs.log(node):
            return delay  # the node took the late request, and waited this long
    pytest.fail("the node never took the late client's request")


def test_an_answer_waits_for_a_client_the_node_has_not_yet_discovered(procs, probe, tmp_path):
    # started as `ros2 run` starts it: no profile in its environment, the node sets its own
    procs.env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    procs.env.pop("ROBOT_IMITATION_DDS_PROFILE", None)
    delay = answer_delay_after_an_unmatched_client(procs, probe, tmp_path, "late_client_rec")
    assert delay > 3.0, f"the node waited only {delay:.2f} s for the client's response reader"
    assert delay < 15.0
    assert "failed to send response" in procs.log("late_client_rec")  # and then gave up
