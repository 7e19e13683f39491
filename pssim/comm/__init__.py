"""Communication primitives policies are written against: sharded parameter servers (push, pull)."""

from pssim.comm.ps import ParameterServers
from pssim.comm.server import ServerShard

__all__ = ["ParameterServers", "ServerShard"]
