"""Why a message was not delivered: the exceptions a send's event fails with once links can fail.

Each keeps its fields in `args` (not just a message), so it survives pickling, e.g. out of a
joblib worker.
"""

from __future__ import annotations


class NetworkError(Exception):
    """A message that the network could not deliver."""


class LinkDown(NetworkError):
    """A link on the message's route was down (capacity zero) while the message needed it.

    Raised into a flow that was moving bytes when the link went down, or that was still paying its
    latency and found the link down when its first byte was due to move.
    """

    def __init__(self, link: str, at: float):
        super().__init__(link, at)
        self.link = link  # the link's name, "src->dst"
        self.at = at  # simulated time of the failure

    def __str__(self) -> str:
        return f"link {self.link} is down (t={self.at!r})"


class NoRoute(NetworkError):
    """No path of up links leads from src to dst (every route crosses a down link)."""

    def __init__(self, src: str, dst: str, at: float | None = None):
        super().__init__(src, dst, at)
        self.src = src
        self.dst = dst
        self.at = at  # simulated time of the send; None when raised by the topology itself

    def __str__(self) -> str:
        when = "" if self.at is None else f" (t={self.at!r})"
        return f"no route of up links from {self.src} to {self.dst}{when}"
