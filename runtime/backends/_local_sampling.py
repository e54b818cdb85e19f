"""Token sampling for the local backend, in numpy: pure functions of (logits, parameters, rng).

The local backend reads the last position's logits from llama.cpp and picks the next token here,
so that sampling is reproducible from a per-request seed and logprobs cost one log-softmax per
token instead of llama.cpp's ``logits_all`` mode.  Semantics follow SGLang's sampler:

* ``temperature < 1e-6`` is greedy (argmax; ties go to the lowest token id); the seed is unused.
* Otherwise the logits are divided by the temperature and turned into probabilities, then
  filtered in this order: ``top_k`` (keep the k most likely; ``-1``/``0`` = all), ``top_p`` (keep
  the most likely tokens while the mass *before* a token is below ``top_p``), ``min_p`` (keep
  tokens whose probability is at least ``min_p`` times the largest).  The survivors are
  renormalised and one is drawn by inverting their cumulative distribution with one uniform draw
  of the request's `numpy.random.Generator`, so one seed gives one token sequence.
* Reported logprobs are the model's own: a log-softmax of the *raw* logits (temperature 1, no
  filtering), the quantity a mean-logprob scorer or a yes/no judge wants.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["GREEDY_BELOW", "choose_token", "log_softmax", "make_rng", "top_alternatives"]

# SGLang treats temperatures below this as greedy decoding.
GREEDY_BELOW = 1e-6

FloatArray = npt.NDArray[np.floating]


def make_rng(seed: int | None) -> np.random.Generator:
    """A generator for one request: seeded (any int, negative ones too) or from OS entropy."""
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng(seed % (1 << 64))


def log_softmax(logits: FloatArray) -> npt.NDArray[np.float64]:
    """Numerically stable log-softmax in float64."""
    z = logits.astype(np.float64, copy=True)
    z -= z.max()
    z -= np.log(np.exp(z).sum())
    return z


def top_alternatives(logprobs: npt.NDArray[np.float64], k: int) -> list[tuple[int, float]]:
    """The ``k`` most likely (token id, logprob) pairs, most likely first (ties: lower id)."""
    k = min(k, logprobs.shape[0])
    if k <= 0:
        return []
    head = np.argpartition(-logprobs, k - 1)[:k]
    order = np.lexsort((head, -logprobs[head]))
    return [(int(head[i]), float(logprobs[head[i]])) for i in order]


def choose_token(
    logits: FloatArray,
    rng: np.random.Generator,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = -1,
    min_p: float = 0.0,
) -> int:
    """Pick the next token id from one position's ``logits`` (see the module doc)."""
    if temperature < GREEDY_BELOW:
        return int(np.argmax(logits))
    vocab = logits.shape[0]
    z = logits.astype(np.float64) / temperature
    ids: npt.NDArray[np.intp] | None = None  # candidate token ids when narrowed, else all
    if 0 < top_k < vocab:
        ids = np.argpartition(-z, top_k - 1)[:top_k]
        z = z[ids]
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if top_p < 1.0:
        ids, probs = _nucleus(ids, probs, top_p)
    if min_p > 0.0:
        keep = probs >= min_p * probs.max()
        probs = probs[keep]
        ids = np.flatnonzero(keep) if ids is None else ids[keep]
    cdf = np.cumsum(probs)
    pick = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    pick = min(pick, cdf.shape[0] - 1)  # guard the u*total == total rounding edge
    return pick if ids is None else int(ids[pick])


def _nucleus(
    ids: npt.NDArray[np.intp] | None, probs: npt.NDArray[np.float64], top_p: float
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """Keep the most likely tokens while the mass before each is below ``top_p``.

    Sorting a whole vocabulary per token is the expensive part, so tokens too unlikely to reach
    the cut are dropped first: those below ``(1 - top_p) / (2 * n)`` carry at most half of the
    ``1 - top_p`` tail in total, so the cut always falls among the survivors and the result is
    exactly that of sorting everything.
    """
    n = probs.shape[0]
    all_ids = np.arange(n) if ids is None else ids
    floor = (1.0 - top_p) / (2.0 * n)
    keep = probs >= floor
    cand_ids, cand_p = all_ids[keep], probs[keep]
    order = np.lexsort((cand_ids, -cand_p))
    cand_ids, cand_p = cand_ids[order], cand_p[order]
    before = np.cumsum(cand_p) - cand_p
    cut = max(1, int(np.count_nonzero(before < top_p)))
    return cand_ids[:cut], cand_p[:cut]
