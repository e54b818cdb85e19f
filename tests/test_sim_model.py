"""The simulated model: exact answer distributions, step structure, stateless continuation,
greedy decoding, logprobs, PRM scores and judge verdicts."""

from __future__ import annotations

import math
import re
from collections import Counter
from itertools import combinations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttcdsl.runtime.sim import SimTask
from ttcdsl.runtime.sim.model import (
    Tok,
    analyse,
    continuation,
    final_answer_probabilities,
    hazard,
    judge_probability,
    prm_score,
    step_options,
    top_logprobs,
)
from ttcdsl.runtime.sim.task import Problem
from ttcdsl.runtime.sim.tokenizer import EOS_ID, tokenizer

Q = "What is 17 + 25?"
PROMPT = f"Solve the problem and end with 'The answer is X.'\nProblem: {Q}\n"
ANSWERS = {"42": 0.45, "32": 0.35, "41": 0.20}
# Chi-square critical values at p = 0.001 (df = 1..4): a correct sampler fails with prob. 1e-3,
# and with fixed seeds the tests are deterministic anyway.
CHI2_CRIT = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47}


def make_task(**over: object) -> SimTask:
    problem: dict[str, object] = {
        "id": "q1",
        "question": Q,
        "answer": "42",
        "answers": ANSWERS,
        "steps": [2, 4],
        "step_tokens": [16, 24],
        "prm_noise": 0.0,
    }
    problem.update(over)
    return SimTask.from_dict({"problems": [problem]})


TASK = make_task()


def sample(task: SimTask, text: str, seed: int | None, limit: int = 5000) -> list[int]:
    """Tokens until (and including) the end-of-sequence token."""
    out: list[int] = []
    for tok in continuation(task, text, seed):
        out.append(tok.id)
        if tok.id == EOS_ID or len(out) >= limit:
            break
    return out


def until(task: SimTask, text: str, seed: int, stop: str) -> list[int]:
    """Tokens until a stop string appears in the output (inclusive) or the sequence ends."""
    out: list[int] = []
    for tok in continuation(task, text, seed):
        out.append(tok.id)
        if tok.id == EOS_ID or stop in tokenizer.decode(out[-4:]):
            break
    return out


def final_answer(text: str) -> str:
    m = re.search(r"The answer is (.+?)\.<\|im_end\|>$", text)
    assert m, text[-80:]
    return m.group(1)


def chi_square(counts: Counter[str], probs: dict[str, float]) -> float:
    n = sum(counts.values())
    assert set(counts) <= {k for k, p in probs.items() if p > 0}
    return sum((counts[k] - n * p) ** 2 / (n * p) for k, p in probs.items() if p > 0)


# ---------------------------------------------------------------- the answer process


@st.composite
def problems(draw: st.DrawFn) -> Problem:
    names = draw(
        st.lists(st.sampled_from(["1", "2", "3", "4", "5"]), min_size=1, max_size=5, unique=True)
    )
    weights = draw(st.lists(st.integers(0, 10), min_size=len(names), max_size=len(names)))
    if sum(weights) == 0:
        weights[0] = 1
    answers = {n: w / sum(weights) for n, w in zip(names, weights)}
    answer = draw(st.sampled_from([*names, "9"]))
    low = draw(st.integers(1, 6))
    high = draw(st.integers(low, 8))
    return Problem(id="p", question="Q", answer=answer, answers=answers, steps=(low, high))


@given(problems())
def test_exact_enumeration_reproduces_answers(problem: Problem) -> None:
    got = final_answer_probabilities(problem)
    for answer, p in problem.answers.items():
        assert got.get(answer, 0.0) == pytest.approx(p, abs=1e-12)
    assert sum(got.values()) == pytest.approx(1.0, abs=1e-12)


@given(problems())
def test_going_wrong_is_spread_evenly_over_the_steps(problem: Problem) -> None:
    p_c = problem.p_correct
    for steps in range(problem.steps[0], problem.steps[1] + 1):
        alive = 1.0
        for k in range(1, steps + 1):
            q = hazard(k, steps, p_c)
            assert alive * q == pytest.approx((1 - p_c) / steps, abs=1e-12)
            alive *= 1 - q
        assert alive == pytest.approx(p_c, abs=1e-12)


def test_wrong_trajectories_stay_wrong() -> None:
    problem = TASK.problems[0]
    assert step_options(problem, 2, 3, "32") == [("32", 1.0)]
    options = dict(step_options(problem, 1, 3, None))
    assert options["42"] == pytest.approx(1 - (1 - 0.45) / 3)


def test_fresh_samples_follow_answers() -> None:
    counts = Counter(
        final_answer(tokenizer.decode(sample(TASK, PROMPT, seed))) for seed in range(3000)
    )
    assert chi_square(counts, ANSWERS) < CHI2_CRIT[2], counts


def test_step_by_step_continuation_with_fresh_seeds_follows_answers() -> None:
    # What `expand` does: stop at each blank line, continue the same branch with a new seed.
    counts: Counter[str] = Counter()
    prompt_ids = tokenizer.encode(PROMPT)
    for branch in range(1500):
        ids: list[int] = []
        for step in range(20):
            ids += until(
                TASK, tokenizer.decode(prompt_ids + ids), seed=branch * 100 + step, stop="\n\n"
            )
            if ids[-1] == EOS_ID:
                break
        counts[final_answer(tokenizer.decode(ids))] += 1
    assert chi_square(counts, ANSWERS) < CHI2_CRIT[2], counts


def test_continuation_from_random_cuts_with_fresh_seeds_follows_answers() -> None:
    counts: Counter[str] = Counter()
    prompt_ids = tokenizer.encode(PROMPT)
    for branch in range(1500):
        first = sample(TASK, PROMPT, seed=branch)
        cut = (branch * 7919) % len(first)
        rest = sample(TASK, tokenizer.decode(prompt_ids + first[:cut]), seed=10**6 + branch)
        counts[final_answer(tokenizer.decode(first[:cut] + rest))] += 1
    assert chi_square(counts, ANSWERS) < CHI2_CRIT[2], counts


def test_answer_outside_answers_is_never_produced() -> None:
    task = make_task(answer="99", answers={"42": 0.5, "32": 0.5})
    answers = {final_answer(tokenizer.decode(sample(task, PROMPT, s))) for s in range(200)}
    assert answers == {"42", "32"}


# ---------------------------------------------------------------- structure


def test_a_sample_has_numbered_steps_of_the_drawn_lengths() -> None:
    task = make_task(steps=[3, 5], step_tokens=[20, 30])
    seen_steps = set()
    for seed in range(60):
        ids = sample(task, PROMPT, seed)
        assert ids[-1] == EOS_ID and EOS_ID not in ids[:-1]
        text = tokenizer.decode(ids[:-1])
        steps = text.split("\n\n")
        total = len(steps)
        seen_steps.add(total)
        for k, step in enumerate(steps, start=1):
            assert step.startswith(f"Step {k} of {total}: we now have ")
            n = len(tokenizer.encode(step + ("\n\n" if k < total else "")))
            assert 20 <= n <= 30, (k, n, step)
        assert re.search(r"\nThe answer is [0-9]+\.$", steps[-1])
    assert seen_steps == {3, 4, 5}


def test_the_running_answer_is_shown_and_the_answer_line_repeats_it() -> None:
    for seed in range(40):
        text = tokenizer.decode(sample(TASK, PROMPT, seed), skip_special_tokens=True)
        values = re.findall(r"we now have (\d+)\.", text)
        wrong = [v != "42" for v in values]
        assert wrong == sorted(wrong)  # once wrong, always wrong
        assert len(set(v for v in values if v != "42")) <= 1
        assert text.endswith(f"The answer is {values[-1]}.")


def test_unknown_prompts_get_generic_steps() -> None:
    text = tokenizer.decode(sample(TASK, "Tell me a story.\n", 3), skip_special_tokens=True)
    assert text.startswith("Step 1 of ")
    assert text.endswith("The answer is unknown.")
    assert not analyse(TASK, "Tell me a story.").recognised


def test_few_shot_examples_before_the_question_are_ignored() -> None:
    shot = tokenizer.decode(
        sample(
            make_task(question="What is 1 + 1?", answers={"2": 1.0}, answer="2"),
            "What is 1 + 1?\n",
            5,
        ),
        skip_special_tokens=True,
    )
    task = SimTask.from_dict(
        {
            "problems": [
                {"question": "What is 1 + 1?", "answer": "2", "answers": {"2": 1.0}},
                {"question": Q, "answer": "42", "answers": {"42": 1.0}},
            ]
        }
    )
    prompt = f"Example. What is 1 + 1?\n{shot}\n\nNow you. {Q}\n"
    text = tokenizer.decode(sample(task, prompt, 1), skip_special_tokens=True)
    assert text.startswith("Step 1 of ") and text.endswith("The answer is 42.")


def test_a_previous_attempt_followed_by_an_instruction_starts_afresh() -> None:
    attempt = tokenizer.decode(sample(TASK, PROMPT, 2), skip_special_tokens=True)
    prompt = f"{PROMPT}{attempt}\nCheck the attempt above and write a better solution.\n"
    assert analyse(TASK, prompt).trajectory.values == ()
    assert tokenizer.decode(sample(TASK, prompt, 3)).startswith("Step 1 of ")


def test_a_finished_sample_continues_with_end_of_sequence_only() -> None:
    ids = tokenizer.encode(PROMPT) + sample(TASK, PROMPT, 4)[:-1]
    assert analyse(TASK, tokenizer.decode(ids)).trajectory.finished
    assert sample(TASK, tokenizer.decode(ids), 9) == [EOS_ID]


# ---------------------------------------------------------------- statelessness


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**63 - 1), st.floats(0, 1, exclude_max=True))
def test_same_seed_continuation_from_any_cut_reproduces_the_sample(seed: int, where: float) -> None:
    full = sample(TASK, PROMPT, seed)
    cut = int(where * len(full))
    prefix = tokenizer.decode(tokenizer.encode(PROMPT) + full[:cut])
    assert full[:cut] + sample(TASK, prefix, seed) == full


def test_same_seed_continuation_from_every_cut_of_one_sample() -> None:
    full = sample(TASK, PROMPT, 12345)
    ids = tokenizer.encode(PROMPT)
    for cut in range(len(full)):
        assert full[:cut] + sample(TASK, tokenizer.decode(ids + full[:cut]), 12345) == full, cut


def test_a_different_seed_keeps_what_is_already_visible() -> None:
    full = sample(TASK, PROMPT, 77)
    text = tokenizer.decode(full)
    steps = int(re.match(r"Step 1 of (\d+):", text).group(1))  # type: ignore[union-attr]
    first_value = re.search(r"we now have (\d+)\.", text).group(1)  # type: ignore[union-attr]
    cut = len(tokenizer.encode(f"Step 1 of {steps}: we now have {first_value}."))
    for seed in range(20):
        rest = tokenizer.decode(
            full[:cut] + sample(TASK, tokenizer.decode(tokenizer.encode(PROMPT) + full[:cut]), seed)
        )
        assert rest.startswith(f"Step 1 of {steps}: we now have {first_value}. ")
        assert len(re.findall(r"Step \d+ of (\d+):", rest)) == steps
        if first_value != "42":
            assert rest.endswith(f"The answer is {first_value}.<|im_end|>")


def test_a_cut_inside_a_number_is_completed_consistently() -> None:
    task = make_task(answer="4242", answers={"4242": 0.5, "4243": 0.3, "4142": 0.2})
    prompt_ids = tokenizer.encode(PROMPT)
    for seed in range(30):
        prefix = tokenizer.encode("Step 1 of 3: we now have 424")
        text = tokenizer.decode(prefix + sample(task, tokenizer.decode(prompt_ids + prefix), seed))
        assert re.match(r"Step 1 of 3: we now have (4242|4243)\. ", text), text


# ---------------------------------------------------------------- greedy and logprobs


def test_temperature_zero_is_seedless_and_takes_the_modal_path() -> None:
    greedy = sample(TASK, PROMPT, None)
    assert sample(TASK, PROMPT, None) == greedy
    text = tokenizer.decode(greedy, skip_special_tokens=True)
    assert text.startswith("Step 1 of 3:")  # the middle of steps [2, 4]
    assert text.endswith("The answer is 42.")  # the modal answer
    task = make_task(answers={"42": 0.3, "32": 0.5, "41": 0.2})
    text = tokenizer.decode(sample(task, PROMPT, None), skip_special_tokens=True)
    assert re.findall(r"we now have (\d+)", text) == ["32"] * 3


def test_logprobs_are_deterministic_negative_and_mark_the_choices() -> None:
    toks = []
    for tok in continuation(TASK, PROMPT, 31):
        toks.append(tok)
        if tok.id == EOS_ID:
            break
    again = [t.logprob for t, _ in zip(continuation(TASK, PROMPT, 31), toks)]
    assert [t.logprob for t in toks] == again
    assert all(-30 <= t.logprob < 0 for t in toks)
    # Token 3 says how many steps there are: uniform over [2, 4].
    assert toks[3].logprob == pytest.approx(-math.log(3))
    # Token 8 is the first running answer: its logprob is that choice's probability.
    steps = int(tokenizer.token_text(toks[3].id))
    probs = dict(step_options(TASK.problems[0], 1, steps, None))
    value = tokenizer.token_text(toks[8].id).strip()
    assert toks[8].logprob == pytest.approx(math.log(probs[value]))


def test_top_logprobs_include_the_token_and_are_sorted() -> None:
    for tok in continuation(TASK, PROMPT, 5):
        for k in (1, 3, 5):
            top = top_logprobs(0, tok, k)
            assert len(top) == k
            assert [lp for _, lp in top] == sorted((lp for _, lp in top), reverse=True)
            assert len({i for i, _ in top}) == k
            assert sum(math.exp(lp) for _, lp in top) <= 1.0 + 1e-9
            if k == 5:
                assert tok.id in dict(top) or tok.alts is not None
        if tok.id == EOS_ID:
            break
    plain = Tok(tokenizer.piece_id(" the"), -1.0)
    assert top_logprobs(7, plain, 3) == top_logprobs(7, plain, 3)
    assert dict(top_logprobs(7, plain, 3))[plain.id] == -1.0


# ---------------------------------------------------------------- reward and judge


def _labelled_texts(task: SimTask, n: int) -> list[tuple[str, bool]]:
    """Prompt + the first k steps of samples, labelled correct-so-far or not."""
    out = []
    for seed in range(n):
        text = tokenizer.decode(sample(task, PROMPT, seed), skip_special_tokens=True)
        steps = text.split("\n\n")
        for k in range(1, len(steps) + 1):
            prefix = "\n\n".join(steps[:k]) + ("\n\n" if k < len(steps) else "")
            value = re.findall(r"we now have (\d+)\.", prefix)[-1]
            out.append((PROMPT + prefix, value == "42"))
    return out


def _pair_accuracy(scores: list[tuple[float, bool]]) -> float:
    good = [s for s, ok in scores if ok]
    bad = [s for s, ok in scores if not ok]
    return sum(g > b for g in good for b in bad) / (len(good) * len(bad))


def test_prm_separates_perfectly_without_noise() -> None:
    scored = [(prm_score(TASK, t), ok) for t, ok in _labelled_texts(TASK, 40)]
    assert {ok for _, ok in scored} == {True, False}
    assert min(s for s, ok in scored if ok) > 0.85 > 0.15 > max(s for s, ok in scored if not ok)
    assert _pair_accuracy(scored) == 1.0


def test_prm_ordering_degrades_monotonically_with_noise() -> None:
    texts = _labelled_texts(TASK, 40)
    accuracies = []
    for noise in (0.0, 0.1, 0.3, 0.6, 1.0):
        task = make_task(prm_noise=noise)
        accuracies.append(_pair_accuracy([(prm_score(task, t), ok) for t, ok in texts]))
    assert accuracies == sorted(accuracies, reverse=True)
    assert accuracies[0] == 1.0 and accuracies[-1] < 0.8


def test_prm_scores_are_deterministic_and_in_the_unit_interval() -> None:
    task = make_task(prm_noise=1.0)
    for text, _ in _labelled_texts(task, 5):
        s = prm_score(task, text)
        assert 0.0 < s < 1.0 and s == prm_score(task, text)
    unknown = prm_score(task, "no question here")  # unrecognised: no margin, only noise
    assert 0.0 < unknown < 1.0 and unknown == prm_score(
        make_task(prm_noise=0.0), "no question here"
    )


def _judge_prompt(branch: str) -> str:
    return f"Question: {Q}\nProposed solution:\n{branch}\nIs the proposed solution correct? Answer Yes or No.\n"


def test_judge_prefers_correct_final_answers() -> None:
    right = _judge_prompt("Step 1 of 1: we now have 42. Next.\nThe answer is 42.")
    wrong = _judge_prompt("Step 1 of 1: we now have 32. Next.\nThe answer is 32.")
    p_right, p_wrong = judge_probability(TASK, right), judge_probability(TASK, wrong)
    assert p_right is not None and p_wrong is not None
    assert p_right > 0.85 and p_wrong < 0.15
    yes, no = tokenizer.piece_id(" Yes"), tokenizer.piece_id(" No")
    assert sample(TASK, right, None) == [yes, EOS_ID]
    assert sample(TASK, wrong, None) == [no, EOS_ID]
    tok = next(iter(continuation(TASK, right, 3)))
    top = dict(top_logprobs(0, tok, 2))
    assert top[yes] == pytest.approx(math.log(p_right))
    assert top[no] == pytest.approx(math.log(1 - p_right))


def test_judge_needs_yes_and_no_as_words_on_the_last_line() -> None:
    assert judge_probability(TASK, _judge_prompt("The answer is 42.")) is not None
    assert judge_probability(TASK, f"{Q}\nSay yes or no.\nThen solve it.\n") is None
    assert judge_probability(TASK, f"{Q}\nThe eyes know nothing.\n") is None
    # A problem that itself asks yes/no is solved, not judged.
    task = make_task(
        question="Is 17 prime? Answer yes or no.", answer="yes", answers={"yes": 0.8, "no": 0.2}
    )
    assert judge_probability(task, "Is 17 prime? Answer yes or no.\n") is None
    assert tokenizer.decode(sample(task, "Is 17 prime? Answer yes or no.\n", 1)).startswith(
        "Step 1 of "
    )


def test_judge_samples_with_the_seed() -> None:
    noisy = make_task(prm_noise=1.0)
    prompt = _judge_prompt("The answer is 32.")
    p = judge_probability(noisy, prompt)
    assert p is not None
    yes = tokenizer.piece_id(" Yes")
    says_yes = sum(sample(noisy, prompt, s)[0] == yes for s in range(2000))
    assert abs(says_yes / 2000 - p) < 4 * math.sqrt(p * (1 - p) / 2000) + 1e-3


def test_pairs_of_steps_never_mix_trajectories() -> None:
    # Any two complete samples with the same seed are identical; different seeds differ.
    samples = {s: sample(TASK, PROMPT, s) for s in range(10)}
    assert samples[3] == sample(TASK, PROMPT, 3)
    assert all(samples[a] != samples[b] for a, b in combinations(samples, 2))


FRAGMENTS = [
    Q, "\n", "\n\n", "Step", " 1", " 2", " 3", " of", ":", " we", " now", " have", " 42", " 32",
    " 4", ".", " Next", " the", "\nThe answer is", " Yes or no?", "Step 1 of 3:", "x", " ",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(FRAGMENTS), max_size=40), st.one_of(st.none(), st.integers(0, 10**6))
)
def test_any_input_gets_a_finite_well_formed_continuation(
    parts: list[str], seed: int | None
) -> None:
    text = "".join(parts)
    out = sample(TASK, text, seed)
    assert out[-1] == EOS_ID and len(out) < 2000
    assert 0.0 < prm_score(TASK, text) < 1.0
    continued = tokenizer.decode(out[:-1])
    analysis = analyse(TASK, text + continued)
    assert analysis.judge_yes is not None or analysis.trajectory.finished or not analysis.recognised


def test_a_new_sample_cut_after_its_first_word_resumes_after_an_old_one() -> None:
    attempt = tokenizer.decode(sample(TASK, PROMPT, 2), skip_special_tokens=True)
    prompt = f"{PROMPT}{attempt}\nImprove it:\n"
    full = sample(TASK, prompt, 8)
    for cut in (1, 2, 3):
        head = tokenizer.decode(tokenizer.encode(prompt) + full[:cut])
        assert full[:cut] + sample(TASK, head, 8) == full
    # ... while a cut inside a later step of the same sample continues that step.
    mid = tokenizer.decode(full).index("\n\nStep 2") + 2
    ids = tokenizer.encode(tokenizer.decode(full)[:mid] + "Step")
    assert tokenizer.decode(ids + sample(TASK, prompt + tokenizer.decode(ids), 8)).startswith(
        tokenizer.decode(full)[:mid] + "Step 2 of "
    )
