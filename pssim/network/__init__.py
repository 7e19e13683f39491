"""Network: transports, topologies built with networkx, and the flow-level max-min fair model."""

from pssim.network.flows import Flow, FlowNetwork
from pssim.network.topology import Link, Topology, star
from pssim.network.transport import Transport

__all__ = ["Flow", "FlowNetwork", "Link", "Topology", "Transport", "star"]
