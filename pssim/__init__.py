"""pssim: a discrete-event simulator of parameter-server distributed training with real gradients.

The names below load on first use (PEP 562), so `import pssim.config` or `import pssim.network`
loads only that layer, not the whole package and Hydra.
"""

from importlib import import_module

_EXPORTS = {
    "Config": "pssim.config",
    "ConfigError": "pssim.config",
    "Result": "pssim.api",
    "simulate": "pssim.api",
    "compose": "pssim.presets",
    "preset_names": "pssim.presets",
    "to_config": "pssim.presets",
    "registered_policies": "pssim.policies",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pssim' has no attribute {name!r}")
    module = import_module(_EXPORTS[name])
    value = getattr(module, "registered" if name == "registered_policies" else name)
    globals()[name] = value
    return value
