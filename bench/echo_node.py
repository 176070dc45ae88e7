"""A bare echo node: the floor that the policy node's state-to-command latency is compared against.

It subscribes to the observation topics of a spec, with the QoS the policy node uses
(``STATE_QOS``), and answers each message on the spec's JointState topic at once with that
message's positions, cut into the spec's actions in order: for ``reach`` and ``push_image``,
position[:7] on /arm_controller/commands and [position[7]] on /gripper_controller/commands
(std_msgs/Float64MultiArray, ``COMMAND_PUB_QOS``, as the policy node publishes). The other state
topics (poses, camera images) are only received, as the policy node receives them; nothing is
decoded and nothing is computed. It runs with the nodes' own entry-point body
(``robot_imitation.nodes.common.run``), so it gets the executor the policy node gets.

    python bench/echo_node.py --ros-args -p spec:=reach
"""
from __future__ import annotations

import sys

from robot_imitation.nodes.common import COMMAND_PUB_QOS, STATE_QOS, declare, run

from rclpy.node import Node  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from robot_imitation.observation import message_class  # noqa: E402
from robot_imitation.spec import Spec  # noqa: E402

JOINT_STATE = "sensor_msgs/msg/JointState"


class EchoNode(Node):
    NODE_NAME = "echo_node"

    def __init__(self):
        super().__init__(self.NODE_NAME)
        spec = Spec.load(declare(self, "spec", "reach", "observation/action spec (config/specs "
                                 "name or path): the topics to subscribe to and to answer on",
                                 read_only=True))
        topics = spec.observation_topics()
        joint_topics = [t for t, mtype in topics.items() if mtype == JOINT_STATE]
        if len(joint_topics) != 1:
            raise ValueError(f"spec '{spec.name}' must observe one JointState topic, not "
                             f"{joint_topics}")
        # (publisher, first position, end) per action, in the spec's order
        self.outputs, start = [], 0
        for f in spec.actions:
            pub = self.create_publisher(Float64MultiArray, f.topic, COMMAND_PUB_QOS)
            self.outputs.append((pub, start, start + f.shape[0]))
            start += f.shape[0]
        self.latest = {}  # newest message per topic: received, not used
        for topic, mtype in topics.items():
            callback = self._on_joints if topic in joint_topics else (
                lambda msg, t=topic: self.latest.__setitem__(t, msg))
            self.create_subscription(message_class(mtype), topic, callback, STATE_QOS)

    def _on_joints(self, msg) -> None:
        position = msg.position  # array('d'): slices go into the command as they are
        for pub, a, b in self.outputs:
            pub.publish(Float64MultiArray(data=position[a:b]))


def main(args=None) -> int:
    return run(EchoNode, args)


if __name__ == "__main__":
    sys.exit(main())
