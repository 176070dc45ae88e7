"""The history a transient-local ("latched") publisher sends a new subscription.

A publisher whose durability is transient local sends each new reliable, transient-local reader
the samples its history still holds, published before that reader existed, and then the live
ones. The suite's publishers of recorded data keep deep histories
(``nodes.common.PUBLISHER_DEPTH``: a reader that falls behind loses only what overflows them),
so the episode status's publisher sends a new subscription up to a thousand past statuses, of
episodes long over (``make demo``'s recorder was sent 30 at a ``~/start``).

An episode holds what was published from its start on, on every topic: a volatile subscription
gets nothing older, and a message received before the start is not recorded. ``Replays`` drops
the samples a latched publisher replays to a subscription made at ``~/start`` (a source stamp
before the subscription was made), and counts them. With a history of one, that replay was the
latched value, recorded or not depending on whether it arrived before or after the start was
noted; a deep history made the last of a long replay arrive after it more often (a test run's
bag began with the status of a state published before the episode).

Source stamps come from the publisher's clock: across machines, a live sample published within
the clocks' skew after the subscription counts as replayed, and a replayed one published within
the skew before it as live.
"""
from __future__ import annotations


class Replays:
    """Batches are lists of ``(received_ns, topic, data, info)`` in reception order, ``info``
    the middleware's message info (``source_timestamp``)."""

    def __init__(self):
        self.since: dict = {}    # latched topic -> when its subscription was made (ns)
        self.skipped: dict = {}  # topic -> replayed samples dropped (take_skipped)

    def subscribed(self, topic: str, now_ns: int) -> None:
        """``topic``'s subscription, transient local, was made at ``now_ns`` (system clock)."""
        self.since[topic] = now_ns

    def drop_replayed(self, batch: list) -> list:
        """The batch without the replayed samples, in reception order."""
        if not self.since:
            return batch
        out = []
        for item in batch:
            since = self.since.get(item[1])
            if since is not None and 0 < (item[3].get("source_timestamp") or 0) < since:
                self.skipped[item[1]] = self.skipped.get(item[1], 0) + 1
            else:
                out.append(item)
        return out

    def take_skipped(self) -> dict:
        """{topic: replayed samples dropped} since the last call."""
        out, self.skipped = self.skipped, {}
        return out
