"""A registry: names users type (in a config key) mapped to what they build, with a helpful error."""

from __future__ import annotations

from typing import Generic, TypeVar

from pssim.config import one_of

T = TypeVar("T")


class Registry(dict, Generic[T]):
    """A dict from name to entry that knows the config key its names are typed in.

    >>> devices = Registry("cluster.device"); devices["v100"] = 1; devices.lookup("v100")
    1
    """

    def __init__(self, key: str):
        super().__init__()
        self.key = key

    def by(self, attribute: str):
        """A class decorator registering a class under its own `attribute` (a schema's name field):
        `straggler_model = STRAGGLER_MODELS.by("model")`."""

        def add(cls):
            self[getattr(cls, attribute)] = cls
            return cls

        return add

    def lookup(self, name: str, key: str | None = None) -> T:
        """The entry called `name`; ConfigError naming `key` (default: the registry's) and the choices."""
        one_of(key or self.key, name, tuple(self))
        return self[name]
