"""The history a transient-local ("latched") publisher sends a new subscription.

A publisher whose durability is transient local sends each new reliable, transient-local reader
the samples its history still holds, published before that reader existed, and then the live
ones. With a history of one that is the latched value. The suite's publishers of recorded data
keep deep histories (``nodes.common.PUBLISHER_DEPTH``: a reader that falls behind loses only
what overflows them), so the episode status's publisher sends a new subscription up to a
thousand past statuses, of episodes long over.

``Replays`` sorts a drained batch: of each publisher's replayed samples (a source stamp before
the subscription was made) it keeps only the newest, the latched value, and passes it on just
before that publisher's first live sample, or at a flush (a stop) if none came. Live samples
pass unchanged. A live sample can overtake the history (seen: one published as the publisher
resumed); the replayed samples after it are all older than it, and none is passed on. Publishers are told apart by their GID, so each latched publisher of a topic
(several ``/tf_static`` broadcasters) keeps its own value.

Source stamps come from the publisher's clock: across machines, a live sample published within
the clocks' skew after the subscription counts as replayed (and only the newest of those is
kept), and a replayed one published within the skew before it as live.
"""
from __future__ import annotations


def _publisher(info: dict):
    gid = info.get("publisher_gid")
    if isinstance(gid, dict):
        gid = gid.get("data")
    return bytes(gid) if gid is not None else None


def _received(item) -> int:
    return item[0]


class Replays:
    """Batches are lists of ``(received_ns, topic, data, info)`` in reception order, ``info``
    the middleware's message info (``source_timestamp``, ``publisher_gid``)."""

    def __init__(self):
        self.since: dict = {}    # latched topic -> when its subscription was made (ns)
        self._held: dict = {}    # (topic, publisher) -> the newest replayed sample so far
        self._skipped: dict = {}  # (topic, publisher) -> older replayed samples not passed on
        self._live: set = set()  # (topic, publisher) whose live samples have begun
        self.skipped: dict = {}  # topic -> all replayed samples not passed on

    def subscribed(self, topic: str, now_ns: int) -> None:
        """``topic``'s subscription, transient local, was made at ``now_ns`` (system clock)."""
        self.since[topic] = now_ns

    def sort(self, batch: list, flush: bool = False) -> tuple[list, list]:
        """(the batch to record, in reception order; ``(topic, skipped)`` for each publisher
        whose replay ended in this batch, ``skipped`` older samples of it not passed on)."""
        if not self.since and not self._held:
            return batch, []
        out, ended = [], []
        for item in batch:
            topic, info = item[1], item[3]
            since = self.since.get(topic)
            if since is None:
                out.append(item)
                continue
            key = (topic, _publisher(info))
            source = info.get("source_timestamp") or 0
            if 0 < source < since:
                held = self._held.get(key)
                if held is not None or key in self._live:
                    self._skipped[key] = self._skipped.get(key, 0) + 1
                if key not in self._live and (
                        held is None or source >= held[3]["source_timestamp"]):
                    self._held[key] = item
                continue
            self._live.add(key)
            held = self._held.pop(key, None)
            if held is not None:
                out.append(held)
            if held is not None or key in self._skipped:
                ended.append(self._end(key))
            out.append(item)
        if flush and self._held:
            for key in list(self._held):
                out.append(self._held.pop(key))
                ended.append(self._end(key))
            out.sort(key=_received)
        return out, [e for e in ended if e[1]]

    def _end(self, key) -> tuple:
        skipped = self._skipped.pop(key, 0)
        self.skipped[key[0]] = self.skipped.get(key[0], 0) + skipped
        return key[0], skipped
