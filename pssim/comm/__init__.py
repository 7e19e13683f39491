"""Communication primitives policies are written against: sharded parameter servers (push, pull),
summation services, gates on clocks and time, and a priority queue drained under an in-flight window."""

from pssim.comm.gates import Clock, MinClock, wait_until
from pssim.comm.ps import ParameterServers
from pssim.comm.queues import PriorityWindow
from pssim.comm.server import ServerShard, ShardDown
from pssim.comm.summation import Push, SummationService

__all__ = ["Clock", "MinClock", "ParameterServers", "PriorityWindow", "Push", "ServerShard", "ShardDown",
           "SummationService", "wait_until"]
