"""pssim: a discrete-event simulator of parameter-server distributed training with real gradients."""

from pssim.api import Result, simulate
from pssim.config import Config, ConfigError, to_config
from pssim.policies import registered as policies

__all__ = ["Config", "ConfigError", "Result", "policies", "simulate", "to_config"]
__version__ = "0.1.0"
