"""Stable hashed randomness for the simulator: draws that depend only on their arguments.

Every random choice the sim makes is one of these, so the same (seed, labels) or text gives the
same draw in every process and on every machine.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable
from hashlib import blake2b

__all__ = ["normal", "randint", "text_seed", "uniform", "uniforms"]

_U64 = struct.Struct(">Q").unpack
_SCALE = 1.0 / (1 << 53)
_N_ENDS = 256
_ENDS = tuple(f"{i})".encode() for i in range(_N_ENDS))  # how the repr of a series' labels ends


def uniform(seed: int, *labels: object) -> float:
    """A uniform draw in [0, 1) that depends only on ``seed`` and ``labels``."""
    digest = blake2b(repr((seed, *labels)).encode(), digest_size=8).digest()
    return (_U64(digest)[0] >> 11) * _SCALE


def uniforms(seed: int, *labels: object) -> Callable[[int], float]:
    """``i -> uniform(seed, *labels, i)`` for integers ``i``, the same draws, cheaper in a
    series: the hash of the common start of the labels is computed once."""
    head = blake2b(("(" + ", ".join(map(repr, (seed, *labels))) + ", ").encode(), digest_size=8)

    def draw(i: int) -> float:
        h = head.copy()
        h.update(_ENDS[i] if 0 <= i < _N_ENDS else f"{i!r})".encode())
        return (_U64(h.digest())[0] >> 11) * _SCALE

    return draw


def text_seed(text: str, label: str) -> int:
    """A 64-bit seed hashed from ``text`` under ``label``."""
    digest = hashlib.blake2b(
        text.encode("utf-8", "surrogatepass"), digest_size=8, person=label.encode()[:16]
    )
    return int.from_bytes(digest.digest(), "big")


def normal(seed: int, label: str) -> float:
    """A standard normal draw (Box-Muller on two hashed uniforms)."""
    u1 = 1.0 - uniform(seed, label, 1)
    u2 = uniform(seed, label, 2)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def randint(low: int, high: int, seed: int, *labels: object) -> int:
    """A uniform integer in ``low..high`` inclusive."""
    return low + min(high - low, int(uniform(seed, *labels) * (high - low + 1)))
