"""Independent, reproducible random streams by name.

Each use (the device-to-device draws of array ``i`` of role ``"slow"``, the
per-pulse noise, ...) gets its own generator derived from ``(seed, role, i)``,
so adding a stream or an array never shifts the draws of another.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


def generator_for(seed: int, role: str, index: int = 0) -> torch.Generator:
    words = [int(seed) & 0xFFFFFFFF, zlib.crc32(role.encode()), int(index)]
    state = int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(state)
