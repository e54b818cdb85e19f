r"""The simulated language model: what it writes, how it scores, and why the numbers are exact.

Everything here is a pure function of (input text, seed): no state, no clocks, so a continuation
behaves the same on any server instance and the in-process backend and the HTTP server agree.

**What a sample looks like.**  For a recognised problem (its ``question`` occurs in the input,
see `SimTask.find`) a fresh sample is ``K`` steps separated by a blank line::

    Step 1 of 3: we now have 42. Next we add the tens column and carry the one.\n\n
    Step 2 of 3: we now have 32. Then we check each place value.\n\n
    Step 3 of 3: we now have 32. So the sum is close to what we expect.\nThe answer is 32.<EOS>

(a sample starts with a newline when the input does not end with whitespace, so that it can be
found again when continued).  ``K`` is uniform on ``steps``; each step has ``T`` tokens, uniform on ``step_tokens`` (never fewer
than its fixed wording), counting everything up to and including the ``\n\n`` (the last step
counts its answer line; the end-of-sequence token is one more).  "we now have V" shows the
trajectory's running answer after the step: the correct ``answer`` while the trajectory is right,
a wrong answer ``w`` once it has gone wrong.  The answer line repeats the last running answer.

**The step-by-step answer, exactly.**  Let ``c`` be the correct answer, ``p_c = answers[c]``
(0 if ``c`` is not listed) and ``K`` the number of steps.  A trajectory starts right.  At step
``k`` a trajectory that is still right goes wrong with the hazard

    q_k = (1 - p_c) / (K - (k - 1)(1 - p_c)),

and then picks its wrong answer ``w != c`` with probability ``p_w / (1 - p_c)``; a wrong
trajectory stays wrong with the same ``w``.  The probability of still being right after step
``k`` telescopes: ``prod_{j<=k} (1 - q_j) = 1 - k(1 - p_c)/K``, so after ``K`` steps it is ``p_c``,
and the probability of ending with ``w`` is ``(1 - p_c) * p_w / (1 - p_c) = p_w`` — for every
``K``, hence exactly ``answers`` overall (going wrong is spread evenly over the steps).  All random
choices of a step come from a hash of ``(seed, step index, purpose)``, so the choices of different
steps are independent and the result is the same whether a sample is generated in one request
or continued step by step with fresh seeds (what `expand` does).

**Continuations.**  The input is parsed back into a trajectory: the text after the (last)
question, from the last ``Step 1 of`` on, must read as complete steps plus possibly the start of
the next one; otherwise the sim starts a fresh sample.  Facts already visible (``K``, running
answers, words) are kept.  An unfinished step is continued as follows: if the text so far is a
prefix of the step the request's own seed would write, that step is finished as written (so
continuing any cut of a sample with the *same* seed reproduces the rest of that sample, token
for token).  Otherwise the step's undecided choices (``K`` and the running answer) are drawn
from their distribution conditioned on the visible text (the options whose wording extends it,
reweighted): this mixture is again exactly the unconditional distribution, so cutting a sample
anywhere and continuing with a fresh seed still follows ``answers`` exactly (up to the small
bias when a cut falls inside a multi-token answer, whose position depends on its length).

**temperature 0** is seedless: ``K`` and ``T`` are the midpoints of their ranges, the filler
comes from seed 0, and the running answer is the modal path: the trajectory goes straight to the
most likely answer of ``answers`` (first listed on a tie) at the first step it can.

**Logprobs** are deterministic functions of the text: the token that reveals ``K`` carries
``log(1/#K)``, the first token of a running answer carries the log-probability of that choice
(so a trajectory's summed logprob reflects how likely its path was).  Every other token's
logprob depends only on it and the token before it (`input_logprob`: near 0 for the fixed
wording, in [-3, -0.2] otherwise), the same function that scores prompt tokens, so a generated
text scored as a prompt gets the same values back.  Top alternatives are consistent with these
(the other answers at a decision, other words elsewhere).  A logprob is never exactly 0.

**Scores.**  `prm_score` scores the newest step of a text: ``sigmoid(2m + j + 8 * prm_noise * Z)``
with ``m = +1`` if the newest decided running answer is correct (or none is decided yet), ``-1``
if it is wrong, ``0`` for an unrecognised problem; ``j`` is a jitter in [-0.25, 0.25] and ``Z`` a
standard normal, both hashed from the text.  With ``prm_noise = 0`` every right trajectory scores
above every wrong one (about 0.86-0.91 against 0.09-0.14).  What the noise means: the AUC (the
chance that a right trajectory outscores a wrong one) is about ``Phi(4 / (8 sqrt(2) prm_noise))``,
measured (tests/test_sim_prm.py) 1.00 at 0.05 and 0.1, 0.99 at 0.15, 0.88 at 0.3, 0.73 at 0.6 and
0.65 at 1.  With ``prm_bias`` the margin of a trajectory whose running answer is favoured is
``-1 + strength``: at strength 2 the PRM cannot tell it from a right one, above 2 it prefers it.
A reasoning problem is scored by the answer its text stands for (`reasoning.current_answer`).

**Judge.**  When the last non-empty line of the input asks for a verdict (it contains the words
"yes" and "no", any case, and is not part of the question) the sim answers `` Yes`` or `` No``
then ends the sequence.  ``P(yes)`` is computed like `prm_score` from the last
``The answer is X.`` in the input (correct ``X``: high; wrong: low; if there is none, from the
running answer of the trajectory), is sampled with the seed (argmax at temperature 0), and both
alternatives are reported in the top logprobs.

**Single-line answers.**  A fresh sample whose input ends like a few-shot prompt (``=``,
``A:`` or ``Answer:``, trailing spaces aside) or whose request stops on ``"\n"`` is one line:
`` X`` after ``=``/``:``, else ``The answer is X.``, then ``\n`` and the end of the sequence, with
``X`` drawn from ``answers`` exactly (the most likely one at temperature 0).  Started samples are
continued step by step as before.

**Probes.**  An input ending in ``\boxed{`` gets ``X}`` and the end of the sequence: ``X`` the
running answer of the trajectory so far (a draw from ``answers`` if no step is decided yet).
Reasoning problems (``thinking`` in the task) are written by `ttcdsl.runtime.sim.reasoning`.

**Unrecognised prompts** get generic steps (2-4 steps of 16-32 tokens) ending in
``The answer is unknown.``
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from typing import TypeVar

from . import reasoning
from .logprobs import Run, Tok, input_logprob, safe_log, top_logprobs
from .rand import normal as _normal
from .rand import randint as _randint
from .rand import text_seed as _text_seed
from .rand import uniform, uniforms
from .task import GENERIC, Problem, SimTask
from .tokenizer import EOS_ID, FILLER_PHRASES, FILLER_WORDS, STARTERS, tokenizer

__all__ = [
    "Analysis",
    "Run",
    "Tok",
    "Trajectory",
    "analyse",
    "continuation",
    "final_answer_probabilities",
    "hazard",
    "input_logprob",
    "judge_probability",
    "prm_score",
    "runs",
    "step_options",
    "top_logprobs",
]

GREEDY_SEED = 0
_T = TypeVar("_T")


# ---------------------------------------------------------------- the answer process


def hazard(k: int, steps: int, p_correct: float) -> float:
    """Probability that a trajectory still right before step ``k`` (1-based) of ``steps`` goes
    wrong at step ``k`` (see the module doc)."""
    wrong = 1.0 - p_correct
    if wrong <= 0.0:
        return 0.0
    return min(1.0, wrong / (steps - (k - 1) * wrong))


def step_options(
    problem: Problem, k: int, steps: int, state: str | None
) -> list[tuple[str, float]]:
    """The running answers possible after step ``k`` given the running answer ``state`` before
    it (None before step 1), each with its probability."""
    c = problem.answer
    if state is not None and state != c:
        return [(state, 1.0)]
    p_c = problem.p_correct
    q = hazard(k, steps, p_c)
    options = [(c, 1.0 - q)]
    if q > 0.0:
        options += [
            (w, q * p / (1.0 - p_c)) for w, p in problem.answers.items() if w != c and p > 0.0
        ]
    return options


def final_answer_probabilities(problem: Problem) -> dict[str, float]:
    """The distribution of a complete sample's answer, computed by exact enumeration of the
    process above (used by tests to check the implementation against ``answers``)."""
    low, high = problem.steps
    total: dict[str, float] = {}
    for steps in range(low, high + 1):
        dist: dict[str | None, float] = {None: 1.0}
        for k in range(1, steps + 1):
            nxt: dict[str | None, float] = {}
            for state, p in dist.items():
                for value, q in step_options(problem, k, steps, state):
                    nxt[value] = nxt.get(value, 0.0) + p * q
            dist = nxt
        for final, p in dist.items():
            assert final is not None
            total[final] = total.get(final, 0.0) + p / (high - low + 1)
    return total


def _modal(problem: Problem) -> str:
    return max(problem.answers.items(), key=lambda kv: kv[1])[0]


# ---------------------------------------------------------------- wording


_INTRO = ": we now have "
_STEP_RE = re.compile(
    r"Step (\d+) of (\d+): we now have (?P<v>[^\n]+?)\.(?P<fill>(?: [A-Za-z]+)*)\."
    r"(?:(?P<sep>\n\n)|\nThe answer is (?P=v)\.)"
)
_PARTIAL_FILL_RE = re.compile(r"(?: [A-Za-z]+)*(?: [A-Za-z]*)?")
_FOREIGN_DECISION_RE = re.compile(r"Step (\d+) of (\d+): we now have (?P<v>[^\n]+?)\.(?= |$)")
_ANSWER_LINE_RE = re.compile(r"The answer is (.+?)\.[ \t]*$", re.MULTILINE)
# A few-shot prompt that wants the answer on the same line ("17 + 25 =", "A:", "Answer:").
_FEW_SHOT_RE = re.compile(r"(?:=|\b(?:A|Answer|answer)[ \t]*:)[ \t]*\Z")
_YES_RE = re.compile(r"\byes\b", re.IGNORECASE)
_NO_RE = re.compile(r"\bno\b", re.IGNORECASE)


def _decision_text(k: int, steps: int, value: str) -> str:
    return f"Step {k} of {steps}{_INTRO}{value}."


def _closing(final: bool, value: str) -> str:
    return f"\nThe answer is {value}." if final else "\n\n"


@dataclass(frozen=True)
class Trajectory:
    """A sample read back from text: ``values[i]`` is the running answer after step ``i + 1``,
    ``partial`` the text of an unfinished next step."""

    steps: int | None = None
    values: tuple[str, ...] = ()
    partial: str = ""
    finished: bool = False

    @property
    def state(self) -> str | None:
        return self.values[-1] if self.values else None


@dataclass(frozen=True)
class Analysis:
    """What the sim makes of an input text."""

    problem: Problem
    recognised: bool
    trajectory: Trajectory
    # Set when the input asks for a yes/no verdict: the probability of " Yes".
    judge_yes: float | None = None
    # Where the question ends in the input (0 when no problem was recognised).
    qend: int = 0
    # The input ends like a few-shot prompt that wants the answer on the same line.
    few_shot: bool = False


def analyse(task: SimTask, text: str) -> Analysis:
    """Recognise the problem, the trajectory so far, and whether this is a judge prompt."""
    found = task.find(text)
    problem, qend = found if found is not None else (GENERIC, 0)
    qstart = qend - len(problem.question)
    judge = _judge_line(text, qstart, qend if found else -1)
    if judge is not None:
        p_yes = _judge_p_yes(problem, found is not None, text, qend, judge)
        return Analysis(problem, found is not None, Trajectory(), judge_yes=p_yes)
    if problem.thinking is not None:
        return Analysis(problem, True, Trajectory(), qend=qend)
    traj = _parse_trajectory(problem, text[qend:])
    few_shot = _fresh(traj) and _FEW_SHOT_RE.search(text) is not None
    return Analysis(problem, found is not None, traj, qend=qend, few_shot=few_shot)


def _judge_line(text: str, qstart: int, qend: int) -> int | None:
    """Start index of the last non-empty line if it asks for yes/no, else None."""
    stripped = text.rstrip()
    start = stripped.rfind("\n") + 1
    line = stripped[start:]
    if not (_YES_RE.search(line) and _NO_RE.search(line)):
        return None
    if qend >= 0 and qstart < len(stripped) and qend > start:
        return None  # the verdict question is the problem itself
    return start


def _parse_trajectory(problem: Problem, tail: str) -> Trajectory:
    """The sample at the end of ``tail`` (text after the question), or a fresh one."""
    start = _last_step_one(tail)
    if start >= 0:
        traj = _parse_from(problem, tail, start)
        if traj is not None:
            return traj
    for head in ("Step 1 of", "Step 1", "Step"):  # a sample cut inside its first words
        i = len(tail) - len(head)
        if tail.endswith(head) and (i == 0 or not tail[i - 1].isalnum()):
            return Trajectory(partial=head)
    return Trajectory()


def _parse_from(problem: Problem, tail: str, start: int) -> Trajectory | None:
    """The sample starting at ``start``, or None if the text from there is not one."""
    pos, k = start, 1
    steps: int | None = None
    values: list[str] = []
    while True:
        m = _STEP_RE.match(tail, pos)
        if m is None:
            break
        if int(m.group(1)) != k or (steps is not None and int(m.group(2)) != steps):
            return None
        steps = int(m.group(2))
        values.append(m.group("v"))
        pos = m.end()
        if m.group("sep") is None:  # the answer line: the sample is complete
            if tail[pos:].strip():
                return None
            return Trajectory(steps, tuple(values), "", finished=True)
        k += 1
    partial = tail[pos:]
    if partial and _decide(problem, k, steps, values[-1] if values else None, partial) is None:
        return None
    return Trajectory(steps, tuple(values), partial)


def _last_step_one(tail: str) -> int:
    end = len(tail)
    while True:
        i = tail.rfind("Step 1 of ", 0, end)
        if i < 0:
            return -1
        if i == 0 or not tail[i - 1].isalnum():
            return i
        end = i


def _options(
    problem: Problem, k: int, steps: int | None, state: str | None
) -> tuple[tuple[int, str, float], ...]:
    """The (steps, running answer, probability) options of step ``k`` (``steps`` None: not
    decided yet, so every number of steps is an option)."""
    memo = _memo(problem)
    key = ("options", k, steps, state)
    hit = memo.get(key)
    if hit is None:
        hit = memo[key] = _enumerate_options(problem, k, steps, state)
    return hit  # type: ignore[return-value]


def _enumerate_options(
    problem: Problem, k: int, steps: int | None, state: str | None
) -> tuple[tuple[int, str, float], ...]:
    if steps is not None:
        return tuple((steps, v, p) for v, p in step_options(problem, k, steps, state))
    low, high = problem.steps
    out: list[tuple[int, str, float]] = []
    for n in range(low, high + 1):
        out += [(n, v, p / (high - low + 1)) for v, p in step_options(problem, k, n, state)]
    return tuple(out)


_MEMOS: dict[int, tuple[Problem, dict[tuple[object, ...], object]]] = {}


def _memo(problem: Problem) -> dict[tuple[object, ...], object]:
    """A cache of facts derived from ``problem`` alone (a task's problems are frozen).  It is
    kept next to the problem itself, so the problem's id cannot be reused while it is cached;
    both levels are bounded (a foreign running answer read from an input is a key too)."""
    hit = _MEMOS.get(id(problem))
    if hit is not None and hit[0] is problem:
        memo = hit[1]
        if len(memo) > 4096:
            memo.clear()
        return memo
    if len(_MEMOS) >= 256:
        _MEMOS.clear()
    memo = {}
    _MEMOS[id(problem)] = (problem, memo)
    return memo


def _consistent(k: int, option: tuple[int, str, float], partial: str) -> bool:
    steps, value, _ = option
    decision = _decision_text(k, steps, value)
    if decision.startswith(partial):
        return True
    return partial.startswith(decision) and _filler_ok(partial[len(decision) :], k == steps, value)


def _filler_ok(rest: str, final: bool, value: str) -> bool:
    m = _PARTIAL_FILL_RE.match(rest)
    assert m is not None
    after = rest[m.end() :]
    if not after:
        return True
    return after[0] == "." and _closing(final, value).startswith(after[1:]) and m.end() > 0


def _decide(
    problem: Problem, k: int, steps: int | None, state: str | None, partial: str
) -> list[tuple[int, str, float]] | None:
    """The options consistent with an unfinished step, or None if the text cannot be one."""
    cons = [o for o in _options(problem, k, steps, state) if _consistent(k, o, partial)]
    if cons:
        return cons
    m = _FOREIGN_DECISION_RE.match(partial)
    if m and int(m.group(1)) == k and (steps is None or int(m.group(2)) == steps):
        foreign = (int(m.group(2)), m.group("v"), 1.0)
        if _consistent(k, foreign, partial):
            return [foreign]
    return None


def _choose(options: Sequence[tuple[int, str, float]], u: float) -> tuple[int, str, float]:
    total = math.fsum(o[2] for o in options)
    acc = 0.0
    for option in options:
        if option[2] <= 0.0:
            continue
        acc += option[2] / total if total > 0 else 0.0
        if u < acc:
            return option
    positive = [o for o in options if o[2] > 0.0]
    return positive[-1] if positive else options[0]


def _greedy_choice(
    problem: Problem, options: Sequence[tuple[int, str, float]], state: str | None
) -> tuple[int, str, float]:
    """Temperature 0: the middle number of steps and the modal answer path."""
    mid = sum(problem.steps) // 2
    target = state if state is not None and state != problem.answer else _modal(problem)
    hits = [o for o in options if o[1] == target and o[2] > 0.0]
    if hits:
        return min(hits, key=lambda o: abs(o[0] - mid))
    return max(options, key=lambda o: (o[2], -abs(o[0] - mid)))


# ---------------------------------------------------------------- generation


def continuation(
    task: SimTask, text: str, seed: int | None, prev_id: int = -1, *, one_line: bool = False
) -> Iterator[Tok]:
    """The tokens the sim writes after ``text``: the rest of the sample, the end-of-sequence
    token, then (for ``ignore_eos``) endless filler sentences each followed by another
    end-of-sequence token.  ``seed=None`` means temperature 0; ``prev_id`` is the last input
    token (plain logprobs depend on the previous token).  ``one_line`` (the request stops on
    ``"\n"``) makes a fresh step-by-step sample a single answer line (module doc)."""
    for run in runs(task, text, seed, prev_id, one_line=one_line):
        yield from run.toks()


def runs(
    task: SimTask,
    text: str,
    seed: int | None,
    prev_id: int = -1,
    *,
    one_line: bool = False,
    analysis: Analysis | None = None,
) -> Iterator[Run]:
    """`continuation` as non-empty `Run`s (a step, a sentence, a chunk of an answer): the same
    tokens, built a run at a time.  ``analysis`` is ``analyse(task, text)`` if the caller has
    it already."""
    if analysis is None:
        analysis = analyse(task, text)
    rseed = GREEDY_SEED if seed is None else seed
    last = prev_id
    for run in _answer_runs(analysis, text, rseed, seed is None, prev_id, one_line):
        if run.ids:
            last = run.ids[-1]
            yield run
    yield Run([EOS_ID], last)
    yield from _tail_runs(rseed)


def _answer_runs(
    analysis: Analysis, text: str, seed: int, greedy: bool, prev_id: int, one_line: bool
) -> Iterator[Run]:
    if analysis.judge_yes is not None:
        yield _judge_run(analysis.judge_yes, seed, greedy, prev_id)
    elif analysis.problem.thinking is not None:
        pieces = reasoning.continuation(analysis.problem, text[analysis.qend :], seed)
        yield from _chunks(pieces, prev_id)
    elif text.endswith(reasoning.PROBE):
        yield Run(_probe_ids(analysis, seed, greedy), prev_id)
    elif analysis.few_shot or (one_line and _fresh(analysis.trajectory)):
        yield Run(_line_ids(analysis.problem, text, seed, greedy), prev_id)
    elif not analysis.trajectory.finished:
        traj = analysis.trajectory
        if not traj.values and not traj.partial and text and not text[-1].isspace():
            # A fresh sample starts on its own line, so it can be found again when continued.
            yield Run([_NEWLINE], prev_id)
            prev_id = _NEWLINE
        yield from _sample_runs(analysis.problem, traj, seed, greedy, prev_id)


def _chunks(ids: Iterator[int], prev_id: int, size: int = 256) -> Iterator[Run]:
    """``ids`` as runs of at most ``size`` tokens (a long thinking is built as it is read)."""
    it = iter(ids)
    while chunk := list(islice(it, size)):
        yield Run(chunk, prev_id)
        prev_id = chunk[-1]


def _fresh(traj: Trajectory) -> bool:
    return not traj.values and not traj.partial and not traj.finished


def _line_ids(problem: Problem, text: str, seed: int, greedy: bool) -> list[int]:
    """A single-line answer: `` X`` after a few-shot ``=`` or ``A:``, else ``The answer is
    X.``; then a newline.  ``X`` is drawn from ``answers`` exactly (the modal one greedily)."""
    options = [(1, a, p) for a, p in problem.answers.items()]
    value = _modal(problem) if greedy else _choose(options, uniform(seed, "line"))[1]
    tail = text.rstrip(" \t")
    if tail.endswith(("=", ":")):
        line = " " + value
    else:
        line = ("" if not text or text[-1].isspace() else " ") + f"The answer is {value}."
    return tokenizer.encode(line + "\n")


def _probe_ids(analysis: Analysis, seed: int, greedy: bool) -> list[int]:
    """A probe (text ending in ``\boxed{``) of a step-by-step sample: its running answer, or
    for a sample with no decided step yet a draw from ``answers``, then ``}``."""
    problem, value = analysis.problem, analysis.trajectory.state
    if value is None:
        options = [(1, a, p) for a, p in problem.answers.items()]
        value = _modal(problem) if greedy else _choose(options, uniform(seed, "probe"))[1]
    return tokenizer.encode(value + "}")


def _sample_runs(
    problem: Problem, traj: Trajectory, seed: int, greedy: bool, prev_id: int
) -> Iterator[Run]:
    k = len(traj.values) + 1
    steps, state, partial = traj.steps, traj.state, traj.partial
    while True:
        chosen, run = _build_step(problem, k, steps, state, partial, seed, greedy, prev_id)
        if run.ids:
            yield run
            prev_id = run.ids[-1]
        steps, state, partial = chosen[0], chosen[1], ""
        if k >= steps:
            return
        k += 1


def _build_step(
    problem: Problem,
    k: int,
    steps: int | None,
    state: str | None,
    partial: str,
    seed: int,
    greedy: bool,
    prev_id: int,
) -> tuple[tuple[int, str, float], Run]:
    """Step ``k``: the option chosen and the tokens still to write after ``partial`` (the part
    of the step already in the input)."""
    options = _options(problem, k, steps, state)
    if greedy:
        own = _greedy_choice(problem, options, state)
        low, high = problem.step_tokens
        length = (low + high) // 2
    else:
        own = _choose(options, uniform(seed, "decide", k))
        length = _randint(*problem.step_tokens, seed, "T", k)
    chosen, (full, ids) = own, _render(k, own, length, seed, text=bool(partial))
    if not full.startswith(partial):
        cons = _decide(problem, k, steps, state, partial) or [own]
        chosen = (
            _greedy_choice(problem, cons, state)
            if greedy
            else _choose(cons, uniform(seed, "posterior", k))
        )
        decision = _decision_text(k, chosen[0], chosen[1])
        existing = partial[len(decision) :] if len(partial) > len(decision) else ""
        full, ids = _render(k, chosen, length, seed, existing)
    return chosen, _step_run(problem, k, steps, state, chosen, full, ids, partial, prev_id)


def _render(
    k: int,
    option: tuple[int, str, float],
    length: int,
    seed: int,
    existing: str = "",
    *,
    text: bool = True,
) -> tuple[str, list[int]]:
    """The full text of step ``k`` with ``length`` tokens and its token ids; ``existing`` (a
    str) is filler text already written after the decision, which is kept and extended.
    Without ``text`` (and ``existing``) only the ids are built: the text is ""."""
    steps, value, _ = option
    final = k == steps
    decision = _decision_text(k, steps, value)
    closing = _closing(final, value)
    if existing:
        m = _PARTIAL_FILL_RE.match(existing)
        assert m is not None
        words = existing[: m.end()]
        if m.end() < len(existing):  # the filler is already closed by "."
            full = decision + words + "." + closing
            return full, tokenizer.encode(full)
        have = _token_count(decision + words + "." + closing)
        more = max(0, length - have)
        if words.endswith(" "):
            words = words[:-1]
        full = decision + words + "".join(" " + w for w in _filler(seed, k, more)) + "." + closing
        return full, tokenizer.encode(full)
    starter = STARTERS[int(uniform(seed, "starter", k) * len(STARTERS))]
    # The step's wording splits into pieces at the decision's final "." and at every word
    # after it, so its ids are those of its parts (the recurring ones cached).
    head, tail = _encoded(decision), _encoded("." + closing)
    more = max(0, length - (len(head) + 1 + len(tail)))
    phrases = _phrases(seed, k, more)
    ids = [*head, _WORD_IDS[starter], *_cut(phrases, _PHRASE_IDS, more), *tail]
    if not text:
        return "", ids
    return " ".join((decision, starter, *_cut(phrases, _PHRASE_WORDS, more))) + "." + closing, ids


def _filler(seed: int, k: int, count: int) -> list[str]:
    """``count`` filler words: seeded phrases strung together, cut at exactly ``count``."""
    return _cut(_phrases(seed, k, count), _PHRASE_WORDS, count)


def _phrases(seed: int, k: int, count: int) -> list[int]:
    """The filler phrases (indices) that `_filler` strings together for ``count`` words."""
    picks: list[int] = []
    if count <= 0:
        return picks
    draw, n, lens = uniforms(seed, "phrase", k), len(_PHRASE_WORDS), _PHRASE_LENS
    words = 0
    while words < count:
        pick = int(draw(len(picks)) * n)
        picks.append(pick)
        words += lens[pick]
    return picks


def _cut(picks: list[int], table: Sequence[Sequence[_T]], count: int) -> list[_T]:
    """The first ``count`` items of the phrases ``picks`` of ``table`` (words or ids)."""
    out: list[_T] = []
    for pick in picks:
        out += table[pick]
    del out[count:]
    return out


def _step_run(
    problem: Problem,
    k: int,
    steps: int | None,
    state: str | None,
    chosen: tuple[int, str, float],
    full: str,
    ids: list[int],
    partial: str,
    prev_id: int,
) -> Run:
    """The tokens of step ``k`` (text ``full``, ids ``ids``) that follow ``partial``."""
    ranked = _decisions(problem, k, steps is None, chosen[0], state)
    if max(ranked) >= len(ids):  # (a step's ids always reach its decisions)
        ranked = {i: a for i, a in ranked.items() if i < len(ids)}
    want = len(partial.encode())
    if not want:
        return Run(ids, prev_id, ranked)
    done = 0
    for i, token_id in enumerate(ids):
        if done == want:
            return Run(ids[i:], ids[i - 1], {j - i: a for j, a in ranked.items() if j >= i})
        done += len(tokenizer.token_bytes(token_id))
    if done == want:
        return Run([], prev_id)
    rest = full.encode()[want:].decode("utf-8", errors="replace")
    return Run(tokenizer.encode(rest), prev_id)


def _decisions(
    problem: Problem, k: int, fresh: bool, steps: int, state: str | None
) -> dict[int, tuple[tuple[int, float], ...]]:
    """The alternatives (best first) of the tokens of step ``k`` of ``steps`` where the sim
    makes a choice, by index in the step: the running answer's first token, and for the first
    step of a sample whose number of steps is not decided yet (``fresh``) the " K" token.
    Cached per problem: read it, never change it."""
    memo = _memo(problem)
    key = ("decisions", k, fresh, steps, state)
    hit = memo.get(key)
    if hit is not None:
        return hit  # type: ignore[return-value]
    decisions: dict[int, tuple[tuple[int, float], ...]] = {}
    if fresh:  # the " K" token of step 1 decides the number of steps
        low, high = problem.steps
        lp = -math.log(high - low + 1) if high > low else -1e-4
        decisions[3] = tuple((_first_id(f" {n}"), lp) for n in range(low, high + 1))
    alts: dict[int, float] = {}
    for value, p in step_options(problem, k, steps, state):
        first = _first_id(" " + value)
        alts[first] = alts.get(first, 0.0) + p
    head = _token_count(f"Step {k} of {steps}{_INTRO.rstrip()}")
    decisions[head] = tuple((i, safe_log(p)) for i, p in alts.items() if p > 0.0)
    ranked = {i: tuple(sorted(a, key=lambda a: -a[1])) for i, a in decisions.items()}
    memo[key] = ranked
    return ranked


@lru_cache(maxsize=4096)
def _token_count(text: str) -> int:
    """Tokens in a piece of the sim's own wording (the same few recur in every sample)."""
    return len(tokenizer.encode(text))


@lru_cache(maxsize=4096)
def _encoded(text: str) -> tuple[int, ...]:
    """The ids of a recurring piece of the sim's wording."""
    return tuple(tokenizer.encode(text))


@lru_cache(maxsize=4096)
def _first_id(text: str) -> int:
    return tokenizer.encode(text)[0]


def _judge_run(p_yes: float, seed: int, greedy: bool, prev_id: int) -> Run:
    yes, no = tokenizer.piece_id(" Yes"), tokenizer.piece_id(" No")
    pair = ((yes, safe_log(p_yes)), (no, safe_log(1.0 - p_yes)))
    alts = tuple(sorted(pair, key=lambda a: -a[1]))
    say_yes = p_yes >= 0.5 if greedy else uniform(seed, "judge") < p_yes
    return Run([yes if say_yes else no], prev_id, {0: alts})


def _tail_runs(seed: int) -> Iterator[Run]:
    """After the end of the sequence (``ignore_eos``): filler sentences, each ending it again."""
    sentence = 0
    while True:
        starter = STARTERS[int(uniform(seed, "tail-starter", sentence) * len(STARTERS))]
        words = _cut(_phrases(seed, -1 - sentence, 8), _PHRASE_IDS, 8)
        # " Starter w1 ... w8." is one piece per word and the ".".
        ids = [_WORD_IDS[starter], *words, _DOT, EOS_ID]
        yield Run(ids, EOS_ID)
        sentence += 1


_WORD_IDS = {w: tokenizer.piece_id(" " + w) for w in (*FILLER_WORDS, *STARTERS)}
_PHRASE_WORDS = tuple(tuple(phrase.split()) for phrase in FILLER_PHRASES)
_PHRASE_IDS = tuple(tuple(_WORD_IDS[w] for w in words) for words in _PHRASE_WORDS)
_PHRASE_LENS = tuple(map(len, _PHRASE_WORDS))
_NEWLINE = tokenizer.piece_id("\n")
_DOT = tokenizer.piece_id(".")


# ---------------------------------------------------------------- scores


def _verdict(margin: float, noise: float, text: str, label: str) -> float:
    seed = _text_seed(text, label)
    jitter = 0.5 * uniform(seed, "jitter") - 0.25
    logit = 2.0 * margin + jitter + 8.0 * noise * _normal(seed, "z")
    return 1.0 / (1.0 + math.exp(-logit))


def prm_score(task: SimTask, text: str) -> float:
    """Process-reward score in (0, 1) of the newest step of ``text`` (see the module doc)."""
    found = task.find(text)
    if found is None:
        return _verdict(0.0, GENERIC.prm_noise, text, "prm")
    problem, qend = found
    if problem.thinking is not None:
        value: str | None = reasoning.current_answer(problem, text[qend:])
    else:
        value = _newest_value(problem, text[qend:])
    margin = 1.0 if value is None or value == problem.answer else -1.0
    bias = problem.prm_bias
    if bias is not None and value in bias.favoured:
        margin += bias.strength
    return _verdict(margin, problem.prm_noise, text, "prm")


def _newest_value(problem: Problem, tail: str) -> str | None:
    traj = _parse_trajectory(problem, tail)
    value = traj.state
    if traj.partial:
        k = len(traj.values) + 1
        cons = _decide(problem, k, traj.steps, value, traj.partial) or []
        decided = {o[1] for o in cons if traj.partial.startswith(_decision_text(k, o[0], o[1]))}
        if len(decided) == 1 and len(cons) == 1:
            value = decided.pop()
    return value


def judge_probability(task: SimTask, text: str) -> float | None:
    """``P(" Yes")`` for a judge prompt, or None if ``text`` does not ask for a verdict."""
    return analyse(task, text).judge_yes


def _judge_p_yes(
    problem: Problem, recognised: bool, text: str, qend: int, line_start: int
) -> float:
    if not recognised:
        return _verdict(0.0, GENERIC.prm_noise, text, "judge")
    region = text[qend:line_start]
    answers = _ANSWER_LINE_RE.findall(region)
    if answers:
        margin = 1.0 if answers[-1].strip() == problem.answer else -1.0
    else:
        state = _parse_trajectory(problem, region).state
        margin = 0.0 if state is None else (1.0 if state == problem.answer else -1.0)
    return _verdict(margin, problem.prm_noise, text, "judge")
