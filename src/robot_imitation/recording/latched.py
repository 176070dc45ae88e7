"""The history a transient-local ("latched") publisher sends a new subscription.

A publisher whose durability is transient local sends each new reliable, transient-local reader
the samples its history still holds, published before that reader existed, and then the live
ones. With a history of one that is the latched value. The suite's publishers of recorded data
keep deep histories (``nodes.common.PUBLISHER_DEPTH``: a reader that falls behind loses only
what overflows them), so the episode status's publisher sends a new subscription up to a
thousand past statuses, of episodes long over (``make demo``'s recorder was sent 30 at a
``~/start``).

``Replays`` sorts the drained batches: of each publisher's replayed samples (a source stamp
before the subscription was made) only the latched value goes on, the newest of them; live
samples pass unchanged. Publishers are told apart by their GID, so each latched publisher of a
topic (several ``/tf_static`` broadcasters) keeps its own value.

Which replayed sample is the newest is known from the publication sequence numbers: a live
sample can overtake the history (seen in ``make demo``, and with a publisher resumed from a
stop), so the newest is the one just before the first live sample, whenever it arrives. Until
a live sample comes, the newest replayed so far is held, and a flush (a stop) passes it on.
Where the middleware gives no sequence numbers, the newest replayed before the first live
sample goes on just before it.

Source stamps come from the publisher's clock: across machines, a live sample published within
the clocks' skew after the subscription counts as replayed, and a replayed one published within
the skew before it as live.
"""
from __future__ import annotations


def _publisher(info: dict):
    gid = info.get("publisher_gid")
    if isinstance(gid, dict):
        gid = gid.get("data")
    return bytes(gid) if gid is not None else None


def _received(item) -> int:
    return item[0]


class _Publisher:
    __slots__ = ("held", "held_seq", "first_live", "done")

    def __init__(self):
        self.held = None        # the newest replayed sample so far, not passed on yet
        self.held_seq = -1
        self.first_live = None  # the sequence number of the first live sample (-1: unknown)
        self.done = False       # the latched value passed on (or known lost): the rest skipped


class Replays:
    """Batches are lists of ``(received_ns, topic, data, info)`` in reception order, ``info``
    the middleware's message info (``source_timestamp``, ``publisher_gid``,
    ``publication_sequence_number``)."""

    def __init__(self):
        self.since: dict = {}      # latched topic -> when its subscription was made (ns)
        self._publishers: dict = {}  # (topic, publisher GID) -> _Publisher
        self.skipped: dict = {}    # topic -> replayed samples not passed on (take_skipped)

    def subscribed(self, topic: str, now_ns: int) -> None:
        """``topic``'s subscription, transient local, was made at ``now_ns`` (system clock)."""
        self.since[topic] = now_ns

    def sort(self, batch: list, flush: bool = False) -> list:
        """The batch to record, in reception order (``flush``: a held latched value too)."""
        if not self.since:
            return batch
        out = []
        for item in batch:
            topic, info = item[1], item[3]
            since = self.since.get(topic)
            if since is None:
                out.append(item)
                continue
            key = (topic, _publisher(info))
            pub = self._publishers.get(key)
            if pub is None:
                pub = self._publishers[key] = _Publisher()
            seq = info.get("publication_sequence_number")
            seq = -1 if seq is None else seq
            source = info.get("source_timestamp") or 0
            if 0 < source < since:
                self._replayed(pub, topic, item, seq, out)
                continue
            if pub.first_live is None:
                pub.first_live = seq
                held = pub.held
                if held is not None and (seq < 0 or pub.held_seq == seq - 1):
                    out.append(held)  # the newest replayed: the latched value
                    pub.held, pub.done = None, True
                elif held is not None:  # older than the one before this live sample
                    pub.held = None
                    self._skip(topic)
            out.append(item)
        if flush:
            held = [(key, pub) for key, pub in self._publishers.items() if pub.held is not None]
            for _, pub in held:
                out.append(pub.held)
                pub.held, pub.done = None, True
            if held:
                out.sort(key=_received)
        return out

    def _replayed(self, pub: _Publisher, topic: str, item, seq: int, out: list) -> None:
        if pub.done or (pub.first_live is not None and pub.first_live < 0):
            self._skip(topic)
        elif pub.first_live is not None:
            # live samples began: only the one just before the first of them is the value
            if seq == pub.first_live - 1:
                out.append(item)
                pub.done = True
            else:
                self._skip(topic)
        elif pub.held is None or seq > pub.held_seq or (seq < 0 and item[3].get(
                "source_timestamp", 0) >= pub.held[3].get("source_timestamp", 0)):
            if pub.held is not None:
                self._skip(topic)
            pub.held, pub.held_seq = item, seq
        else:
            self._skip(topic)

    def _skip(self, topic: str) -> None:
        self.skipped[topic] = self.skipped.get(topic, 0) + 1

    def take_skipped(self) -> dict:
        """{topic: replayed samples not passed on} since the last call."""
        out, self.skipped = self.skipped, {}
        return out
