"""Connections: a transport connection carries its messages one at a time, in the order they were sent.

ps-lite's van opens one socket per peer (a ZMQ DEALER, src/zmq_van.h), so a BytePS worker machine
talks to each server instance over one TCP connection per direction, and every message it sends that
instance waits behind the ones sent before. Each message is one flow of the network, so it is held to
the transport's single-stream cap (`network.flow_cap_gbps`) and shares the links max-min with every
other flow; the next message leaves when the previous one has landed. A connection carrying messages
of s_1 .. s_m bytes alone on its route therefore takes

    sum_i (alpha + s_i / min(cap, link rate))

and c connections side by side reach c x cap until a link binds: more connections (BytePS server
instances) are how a deployment fills a link that one TCP stream cannot.

    links = Connections(env, network)
    done = links.send(src, dst, nbytes, tag)   # queued on the (src, dst) connection; fires when it lands

If a message fails in the network (a link down), its event fails with that error and the connection
goes on with the next message.
"""

from __future__ import annotations

import simpy


class Connection:
    """One direction of one connection from `src` to `dst`: a FIFO of messages, one in flight at a time."""

    def __init__(self, env: simpy.Environment, network, src: str, dst: str):
        self.env = env
        self.network = network
        self.src = src
        self.dst = dst
        self._last: simpy.Event | None = None  # the newest message's event, until it has been processed
        self.messages = 0  # sent so far (queued included)

    def send(self, nbytes: float, tag: str) -> simpy.Event:
        """Queue a message of `nbytes`; the event fires when its last byte lands at `dst`."""
        done = self.env.event()
        self.messages += 1
        ahead = self._last
        if ahead is None or ahead.processed:
            self._start(done, nbytes, tag)
        else:
            ahead.callbacks.append(lambda _event: self._start(done, nbytes, tag))
        self._last = done
        return done

    def _start(self, done: simpy.Event, nbytes: float, tag: str) -> None:
        """The message ahead has landed (or failed): this one becomes a flow of the network."""
        flow = self.network.send(self.src, self.dst, nbytes, tag)
        flow.callbacks.append(lambda event: _settle(done, event))


class Connections:
    """The connections of one set of peers, opened on first use: `send(src, dst, ...)` queues on the
    (src, dst) connection. Two `Connections` objects never share a connection (two server instances on
    one machine each get their own sockets)."""

    def __init__(self, env: simpy.Environment, network):
        self.env = env
        self.network = network
        self.open: dict[tuple[str, str], Connection] = {}

    def send(self, src: str, dst: str, nbytes: float, tag: str = "") -> simpy.Event:
        connection = self.open.get((src, dst))
        if connection is None:
            connection = self.open[src, dst] = Connection(self.env, self.network, src, dst)
        return connection.send(nbytes, tag)


def _settle(target: simpy.Event, source: simpy.Event) -> None:
    """Fire `target` as `source` went: succeed, or fail with its error (the failure is target's now)."""
    if source.ok:
        target.succeed(source.value)
    else:
        source.defused = True
        target.fail(source.value)
