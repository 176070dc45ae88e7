"""What a recorder has taken of an episode's end: the newest command on each action topic and
the newest message on each topic that carries every state, read while a stop waits for the
final state's messages (``nodes.recorder_node``).

Newest means last published (the greatest DDS source timestamp), not last received. A reliable
writer's samples reach the reader in the order published, but the reception stamp of a sample
the reader's transport dropped, and the writer sent again, is the time of the repair: later than
the samples published after it, which waited in the reader for it. A recorder's drain hands
messages on in reception order, so the last one handed on was such a repaired sample, an
earlier state's: a recorder stopped through a lockstep episode on a loaded machine judged its
bag to lack the final state (``incomplete``) while the bag held every message.

Plain Python: no ROS graph, testable alone. Bytes are kept as taken; their stamps are read only
when asked (a stop's wait), never per message.
"""
from __future__ import annotations

import time

from ..cdr import answer_stamp
from .timing import header_stamp_ns


class FinalState:
    """``start(answering, per_state)`` at each episode's start: ``answering`` maps each action
    topic to whether its commands name their state by a header stamp (else a ``stamp=`` layout
    label, or none); ``per_state``: the topics that carry every state. ``offer(batch)`` takes the
    drain's ``[(received_ns, topic, data, info), ...]`` (``info``: the middleware's
    ``source_timestamp`` and ``received_timestamp``, 0 where it has none)."""

    __slots__ = ("answering", "per_state", "_answer", "_state")

    def __init__(self):
        self.answering: dict = {}
        self.per_state: frozenset = frozenset()
        self._answer: dict = {}  # topic -> (source ns, bytes, reception ns)
        self._state: dict = {}  # topic -> (source ns, bytes)

    def start(self, answering: dict, per_state) -> None:
        self.answering, self.per_state = dict(answering), frozenset(per_state)
        self._answer, self._state = {}, {}

    def offer(self, batch) -> None:
        if not self.answering:  # nothing waits for an episode's end
            return
        answering, per_state, answers, states = (self.answering, self.per_state, self._answer,
                                                 self._state)
        for _, topic, data, info in batch:
            if topic in answering:
                source = info["source_timestamp"]
                held = answers.get(topic)
                if held is None or source >= held[0]:
                    answers[topic] = (source, data, info["received_timestamp"] or time.time_ns())
            elif topic in per_state:
                source = info["source_timestamp"]
                held = states.get(topic)
                if held is None or source >= held[0]:
                    states[topic] = (source, data)

    def reached(self, topic: str, final: int) -> bool:
        """Has ``topic`` (one that carries every state) a message of the final state's instant
        (``final``, ns) or a later one?"""
        held = self._state.get(topic)
        stamp = header_stamp_ns(held[1]) if held is not None else None
        return stamp is not None and stamp >= final

    def answered(self, topic: str, final: int, seen: int) -> bool:
        """Has ``topic`` a command answering the state stamped ``final``: one naming it or a
        later one, or one naming none received after that state's status (at ``seen``)?"""
        held = self._answer.get(topic)
        if held is None:
            return False
        _, data, received = held
        stamp = answer_stamp(data, self.answering[topic])
        return stamp >= final if stamp is not None else received >= seen
