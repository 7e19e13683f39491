"""pssim: a discrete-event simulator of parameter-server distributed training with real gradients."""

from pssim.api import Result, simulate
from pssim.config import Config, ConfigError
from pssim.policies import registered as registered_policies
from pssim.presets import compose, presets, to_config

__all__ = ["Config", "ConfigError", "Result", "compose", "presets", "registered_policies", "simulate",
           "to_config"]
__version__ = "0.1.0"
