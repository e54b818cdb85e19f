"""The simulator's tokenizer: deterministic, reversible, with a fixed vocabulary.

Promises:

* ``decode(encode(text)) == text`` for every string (property-tested), and `encode` is a pure
  function: ids are the same in every process, on every machine (the vocabulary is built from
  constant tables in this module, never from the data it sees).
* Token counts are realistic-ish.  Text is first split into pieces the way BPE tokenizers
  pre-tokenize (a word with its leading space, a number of up to three digits with its leading
  space, one punctuation mark, a run of newlines, a run of other whitespace); a piece in the
  vocabulary is one token, anything else is split greedily into the longest known sub-pieces
  (letter pairs, common suffixes), and characters outside ASCII fall back to one token per
  UTF-8 byte.  ``"The answer is 42."`` is 5 tokens; an unknown word costs about one token per two
  letters.
* Ids 0..2 are the special tokens ``<|endoftext|>``, ``<|im_start|>`` and ``<|im_end|>`` (the
  end-of-sequence token is ``<|im_end|>`` = 2, as for SmolLM2-Instruct); they are recognised in
  text.  Ids 3..258 are the 256 raw bytes.  No BOS token is added.

It does not promise that ``encode(a) + encode(b) == encode(a + b)``: as with real tokenizers, a
piece can straddle the boundary (e.g. a prompt ending in a space).
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence
from functools import lru_cache

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "FILLER_PHRASES",
    "FILLER_WORDS",
    "SPECIAL_TOKENS",
    "STARTERS",
    "SimTokenizer",
    "tokenizer",
]

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
BOS_ID = 1
EOS_ID = 2
_BYTE_BASE = len(SPECIAL_TOKENS)
_PIECE_BASE = _BYTE_BASE + 256
_MAX_PIECE = 24

# Common English words and the words the simulator writes; each becomes four tokens
# ("word", " word", "Word", " Word").  Order matters: appending keeps existing ids stable.
_WORDS_TEXT = """
the of and to in is it that for on was with as be by at this are or from but not have had has
an they which you were their one all we can her there been if more when will would who so no
what out up said about other into than its time only could new them man some these then two
first may any like now my such make over our even most me state after also made many did must
before back see through way where get much go well your know should down work year because come
people just say each those take day good how long very same part find under give think both own
right here last between never does few while large use without next old great small big value
values answer answers step steps question result results number numbers sum total difference
product quotient digit digits units tens hundreds carry borrow add adds added adding subtract
subtracting multiply multiplying divide dividing compute computing check checking compare
comparing count counting write writing keep keeping note noting combine combining solve solving
simplify group regroup column columns place places term terms side sides equal equals equation
left remainder partial running current final true false yes no correct wrong ok careful
carefully again first second third last next then now so here therefore thus hence plus minus
times half twice double once round rounded estimate exact exactly problem problems solution
solutions assistant user system please help thank thanks hello world story dragon capital city
country name names list item items line lines text word words letter letters sentence paragraph
example examples prompt reply respond response reason reasons reasoning think thinking given
since known unknown let suppose assume consider notice recall start end begin finish done ready
fast slow quick brown fox jumps lazy dog cat tree house water fire one two three four five six
seven eight nine ten hundred thousand million
"""
_WORDS = _WORDS_TEXT.split()

# The phrases the simulator's filler sentences are made of; their words are all single tokens
# (with a leading space), and none of them is "yes" or "no".
FILLER_PHRASES = (
    "we add the units digits",
    "and carry the one",
    "then we add the tens",
    "we check each place value",
    "and keep the partial sum",
    "we compare both sides",
    "and write the running total",
    "we regroup the terms",
    "and note the remainder",
    "we combine the columns",
    "then we count again",
    "we multiply the values",
    "and divide the result",
    "we simplify the sum",
    "we estimate the result first",
    "and round the digits",
    "we recall the question",
    "and consider each step",
    "so the value is close to what we expect",
)
FILLER_WORDS = tuple(sorted({w for phrase in FILLER_PHRASES for w in phrase.split()}))
STARTERS = ("Next", "Now", "Here", "Again", "Also")

_SUFFIXES = [
    "ing",
    "ed",
    "er",
    "ly",
    "es",
    "tion",
    "ment",
    "ness",
    "able",
    "ous",
    "ive",
    "ful",
    "less",
    "est",
    "ity",
    "al",
    "ic",
    "ism",
    "ist",
    "ize",
    "ise",
    "ate",
    "ence",
    "ance",
    "age",
    "ery",
    "ory",
    "ship",
    "hood",
    "ward",
    "wise",
    "ould",
    "ight",
    "ound",
]


def _build_vocab() -> list[str]:
    pieces: list[str] = []
    seen: set[str] = set()

    def add(piece: str) -> None:
        # Single characters are covered by the byte tokens.
        if len(piece) > 1 and piece not in seen:
            seen.add(piece)
            pieces.append(piece)

    for n in range(1, 5):
        add("\n" * n)
    for n in range(2, 17):
        add(" " * n)
    for n in range(2, 5):
        add("\t" * n)
    for i in range(1000):
        add(str(i))
        add(" " + str(i))
    for p in string.punctuation:
        add(" " + p)
    for word in (*_WORDS, *FILLER_WORDS, *(s.lower() for s in STARTERS)):
        for form in (word, word.capitalize()):
            add(form)
            add(" " + form)
    letters = string.ascii_lowercase
    for c in string.ascii_letters:
        add(" " + c)
    for a in letters:
        for b in letters:
            add(a + b)
            add(" " + a + b)
            add(a.upper() + b)
            add(" " + a.upper() + b)
    for suffix in _SUFFIXES:
        add(suffix)
    return pieces


_SPECIAL_RE = re.compile("(" + "|".join(re.escape(s) for s in SPECIAL_TOKENS) + ")")
# Pre-tokenization: every character of the input belongs to exactly one match.
_PIECE_RE = re.compile(
    r" ?[A-Za-z]+"
    r"| ?[0-9]{1,3}"
    r"| ?[^\sA-Za-z0-9]"
    r"|\n+"
    r"|[^\S\n]+(?=[^\S\n][^\s])"
    r"|[^\S\n]+"
)


class SimTokenizer:
    """The tokenizer (stateless after construction; use the shared `tokenizer` instance)."""

    def __init__(self) -> None:
        self._pieces = _build_vocab()
        self._piece_to_id = {p: _PIECE_BASE + i for i, p in enumerate(self._pieces)}
        self._special_to_id = {s: i for i, s in enumerate(SPECIAL_TOKENS)}
        self._id_bytes: list[bytes] = [s.encode() for s in SPECIAL_TOKENS]
        self._id_bytes += [bytes([b]) for b in range(256)]
        self._id_bytes += [p.encode() for p in self._pieces]
        self.encode_piece = lru_cache(maxsize=65536)(self._encode_piece)

    @property
    def vocab_size(self) -> int:
        return len(self._id_bytes)

    @property
    def eos_id(self) -> int:
        return EOS_ID

    def is_special(self, token_id: int) -> bool:
        return 0 <= token_id < _BYTE_BASE

    def piece_id(self, piece: str) -> int:
        """The id of a piece that is one token (a vocabulary piece or one ASCII character)."""
        if piece in self._piece_to_id:
            return self._piece_to_id[piece]
        if len(piece) == 1 and ord(piece) < 128:
            return _BYTE_BASE + ord(piece)
        if piece in self._special_to_id:
            return self._special_to_id[piece]
        raise KeyError(f"{piece!r} is not a single token")

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (special tokens recognised; no BOS added)."""
        ids: list[int] = []
        if "<|" not in text:  # no special token can occur: skip the split
            known, piece_ids = self._piece_to_id, self.encode_piece
            for piece in _PIECE_RE.findall(text):
                one = known.get(piece)
                if one is not None:
                    ids.append(one)
                else:
                    ids.extend(piece_ids(piece))
            return ids
        for part in _SPECIAL_RE.split(text):
            if not part:
                continue
            special = self._special_to_id.get(part)
            if special is not None:
                ids.append(special)
                continue
            for piece in _PIECE_RE.findall(part):
                ids.extend(self.encode_piece(piece))
        return ids

    def _encode_piece(self, piece: str) -> tuple[int, ...]:
        known = self._piece_to_id.get(piece)
        if known is not None:
            return (known,)
        out: list[int] = []
        i = 0
        while i < len(piece):
            for length in range(min(len(piece) - i, _MAX_PIECE), 1, -1):
                sub = self._piece_to_id.get(piece[i : i + length])
                if sub is not None:
                    out.append(sub)
                    i += length
                    break
            else:
                out.extend(_BYTE_BASE + b for b in piece[i].encode())
                i += 1
        return tuple(out)

    def token_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < len(self._id_bytes):
            raise ValueError(f"token id {token_id} is out of range [0, {len(self._id_bytes)})")
        return self._id_bytes[token_id]

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; invalid UTF-8 (a cut multi-byte character) becomes U+FFFD."""
        chunks = []
        for token_id in ids:
            if skip_special_tokens and self.is_special(token_id):
                continue
            chunks.append(self.token_bytes(token_id))
        return b"".join(chunks).decode("utf-8", errors="replace")

    def token_text(self, token_id: int) -> str:
        """The text of one token as SGLang reports it in logprob triples."""
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def validate_ids(self, ids: Sequence[int]) -> None:
        if not ids or (min(ids) >= 0 and max(ids) < len(self._id_bytes)):
            return  # the usual case, checked in C; the loop below names the first bad id
        for token_id in ids:
            if not 0 <= token_id < len(self._id_bytes):
                raise ValueError(
                    f"token id {token_id} is out of vocabulary range [0, {len(self._id_bytes)})"
                )


tokenizer = SimTokenizer()
