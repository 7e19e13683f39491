"""Network: transports, topologies built with networkx, and the flow-level max-min fair model."""

from pssim.network.errors import LinkDown, NetworkError, NoRoute
from pssim.network.flows import Flow, FlowNetwork
from pssim.network.topology import Link, Topology, leaf_spine, star
from pssim.network.transport import Transport

__all__ = ["Flow", "FlowNetwork", "Link", "LinkDown", "NetworkError", "NoRoute", "Topology", "Transport",
           "leaf_spine", "star"]
