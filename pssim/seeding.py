"""Named random streams: every component draws from its own Generator derived from the run's seed."""

from __future__ import annotations

import zlib

import numpy as np


class Streams:
    """Hands out one independent numpy Generator per name, all derived from one root seed.

    The stream for a name depends only on (seed, name), never on the order in which streams are
    requested, so adding a component never shifts another's random numbers.
    """

    def __init__(self, seed: int):
        self.seed = int(seed)

    def sequence(self, name: str) -> np.random.SeedSequence:
        return np.random.SeedSequence(entropy=self.seed, spawn_key=(zlib.crc32(name.encode()),))

    def generator(self, name: str) -> np.random.Generator:
        return np.random.default_rng(self.sequence(name))

    def torch_seed(self, name: str) -> int:
        """A 63-bit seed for torch.Generator.manual_seed, from the same root."""
        return int(self.sequence(name).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
