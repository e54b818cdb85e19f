"""Deterministic seeds derived from labels.

Every seed the runtime and its harnesses send is `derive_seed` of the run seed and the labels that
say where the request comes from (frame path, node id, fork index; a dataset item's id; a bench
repeat), so a run reproduces exactly whatever the scheduling.  The hash is stable across Python
versions and processes (``hash()`` is not), and the result fits a signed 31-bit integer, which
every backend accepts as a sampling seed.
"""

from __future__ import annotations

import hashlib

__all__ = ["derive_seed"]


def derive_seed(*labels: object) -> int:
    """A 31-bit seed that is a pure function of ``labels`` (joined by ``|`` as text)."""
    digest = hashlib.blake2b("|".join(map(str, labels)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF
