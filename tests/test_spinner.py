"""``Spinner``: the background spinning of the library's nodes (the episode runner, the
pipelines' helpers) survives a callback that raises."""
import time

import pytest

from conftest import wait_for

pytestmark = pytest.mark.ros


def test_a_callback_that_raises_does_not_silence_the_others(ros):
    """One bad message used to end the spin thread (rclpy logged it, the thread returned): every
    other subscription of the nodes went quiet, and a runner waited for its episode's end until
    its timeout. The error is counted and logged; the other subscription keeps receiving."""
    from std_msgs.msg import String

    from robot_imitation.nodes.common import COMMAND_QOS
    from robot_imitation.nodes.episode_runner import Spinner

    node = ros.create_node("test_spinner_listener")
    talker = ros.create_node("test_spinner_talker")
    good = []

    def bad(msg):
        raise KeyError(f"no such key: {msg.data}")

    node.create_subscription(String, "/test_spinner/bad", bad, COMMAND_QOS)
    node.create_subscription(String, "/test_spinner/good", good.append, COMMAND_QOS)
    pub_bad = talker.create_publisher(String, "/test_spinner/bad", COMMAND_QOS)
    pub_good = talker.create_publisher(String, "/test_spinner/good", COMMAND_QOS)
    spinner = Spinner(node)
    try:
        wait_for(lambda: pub_bad.get_subscription_count() and pub_good.get_subscription_count(),
                 30, "matched")
        pub_good.publish(String(data="before"))
        wait_for(lambda: good, 10, "the first message")
        pub_bad.publish(String(data="x"))
        time.sleep(0.5)  # taken and failed meanwhile
        for k in range(3):
            pub_good.publish(String(data=f"after {k}"))
        wait_for(lambda: len(good) == 4, 10, "the messages after the error")
        time.sleep(0.2)
        assert spinner.thread.is_alive()
        assert spinner.errors == 1
        assert [m.data for m in good] == ["before", "after 0", "after 1", "after 2"]
    finally:
        spinner.stop()
        node.destroy_node()
        talker.destroy_node()
    assert not spinner.thread.is_alive()
