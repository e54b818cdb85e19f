"""``python -m bench``, the suite against SGLang's frontend: its ttcdsl-only path end to end on
the smallest sizes (the JSON it writes: keys present, ratios positive and finite; nothing about
speed), where it looks for the frontend, and the pure pieces (the latency model's ideal, the
scaling fit) on data made up to have known answers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `bench/` is a folder of the repository, not an installed package

from bench.__main__ import frontend_python  # noqa: E402
from bench.critical import ideal, replay, summarize  # noqa: E402
from bench.procs import BenchError  # noqa: E402
from bench.report import slope  # noqa: E402
from bench.workloads import FULL, QUICK, sampling  # noqa: E402

RATIO_KEYS = ("wall_ratio_vs_sglang_frontend", "cpu_per_generation_ratio_vs_sglang_frontend",
              "prefilled_tokens_ratio_vs_sglang_frontend")


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "report.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--no-frontend", "--json",
                           str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report: dict[str, Any] = json.loads(out.read_text())
    return report


@pytest.mark.slow
def test_the_ttcdsl_only_report_has_every_figure_as_a_positive_number(
    smoke: dict[str, Any],
) -> None:
    assert set(smoke["workloads"]) == {"self_consistency_4", "beam_search_2x2_d1", "dataset_3x2",
                                       "scaling_sc_2", "scaling_sc_4"}
    for name, ratio in smoke["critical_path_ratio"]["ttcdsl"].items():
        assert _positive(ratio), name
        assert _positive(smoke["model_path_ratio"]["ttcdsl"][name]), name
    for workload in smoke["workloads"].values():
        figures = workload["ttcdsl"]
        for key in ("wall_s", "cpu_s", "cpu_per_generation_ms", "prefilled_tokens"):
            assert _positive(figures[key]["median"]), key
    assert set(smoke["overhead_us_per_request"]) == {"best_of_8", "beam_search_2x2_d2"}
    assert all(_positive(v) for v in smoke["overhead_us_per_request"].values())
    assert all(_positive(v["sim_decode_s"]) for v in smoke["overhead_detail"].values())
    assert list(smoke["prefix_reuse_ratio"]) == ["self_consistency"]
    assert _positive(smoke["prefix_reuse_ratio"]["self_consistency"])
    assert _positive(smoke["peak_rss_mb"]) and smoke["peak_rss"]["branches"] == 50
    scaling = smoke["scaling_exponent"]
    assert scaling["forks"] == [2, 4]
    assert math.isfinite(scaling["ttcdsl"]["wall"]) and math.isfinite(scaling["ttcdsl"]["cpu"])


@pytest.mark.slow
def test_without_the_frontend_its_ratios_are_null_and_its_goals_not_judged(
    smoke: dict[str, Any],
) -> None:
    assert smoke["frontend"]["available"] is False
    assert "--no-frontend" in smoke["frontend"]["note"]
    for key in RATIO_KEYS:
        assert key in smoke and smoke[key] is None
    assert "frontend" not in smoke["critical_path_ratio"]
    judged = {g["goal"]: g["met"] for g in smoke["goals"]}
    assert judged["wall <= 0.8x the frontend's on every workload"] is None
    assert judged["peak RSS < 500 MB at 10,000 branches"] is None  # measured at 50 only


def _args(**given: Any) -> Any:
    return type("Args", (), {"no_frontend": False, "frontend_python": None, **given})()


def test_without_the_tier_venv_quick_skips_the_frontend_and_full_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TTC_SGLANG_HOME", str(tmp_path))
    python, note = frontend_python(_args(), QUICK)
    assert python is None
    assert note.startswith("SGLang's frontend skipped: no SGLang venv at")
    assert "scripts/sglang_tier.sh setup" in note
    with pytest.raises(BenchError, match=r"scripts/sglang_tier.sh setup .*--quick or --no-frontend"):
        frontend_python(_args(), FULL)


def test_the_tier_venv_is_found_by_its_marker(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").touch()
    (tmp_path / "venv" / ".ttc-installed").touch()
    monkeypatch.setenv("TTC_SGLANG_HOME", str(tmp_path))
    python, _ = frontend_python(_args(), FULL)
    assert python == str(tmp_path / "venv" / "bin" / "python")


def test_the_spec_reads_prompt_and_settings_from_the_program() -> None:
    assert sampling("programs/self_consistency.ttc") == {
        "prompt": 'Solve the problem and end with "The answer is X."\nProblem: {question}',
        "max_tokens": 512, "temperature": 0.7, "step": None}
    beam = sampling("programs/beam_search.ttc")
    assert beam["prompt"].startswith("{question}\n") and beam["step"] == "\n\n"
    assert (beam["max_tokens"], beam["temperature"]) == (256, 1.0)


# --- the latency model's ideal, on a made-up log (one character = one token) -------------------


def _req(t0: float, t1: float, text: str, out: str = "", cached: int = 0,
         warm: bool = False) -> dict[str, Any]:
    return {"t0": t0, "ta": t0, "t1": t1, "input_ids": [ord(c) for c in text],
            "output_ids": [ord(c) for c in out], "cached": cached, "warm": warm}


def _decode(ids: Any) -> str:
    return "".join(map(chr, ids))


def test_a_fork_waits_for_its_warm_up_but_not_for_its_siblings() -> None:
    log = [_req(0.0, 1.0, "abcd", warm=True),
           _req(2.0, 3.0, "abcd", "xy", cached=3), _req(2.0, 4.0, "abcd", "xyz", cached=3),
           _req(5.0, 6.0, "abcd", "w", cached=3)]  # a late sibling: still no dependency
    got = ideal(log, _decode, prefill_s=1.0, decode_s=10.0, max_batch=0)
    assert got.chain_s == pytest.approx(4 + 1 + 30)  # warm-up prefill, then the longest fork
    assert got.work_s == 0.0
    assert got.served_s == pytest.approx(1.0 + 2.0)


def test_a_continuation_adds_to_the_chain_of_what_it_continues() -> None:
    log = [_req(0.0, 1.0, "ab", "cd"), _req(1.5, 2.0, "abcd\n", "ef", cached=3),
           _req(2.5, 3.0, "abcd\nef", "g", cached=6), _req(2.5, 2.6, "zz", "q")]
    got = ideal(log, _decode, prefill_s=0.0, decode_s=1.0, max_batch=2)
    assert got.chain_s == pytest.approx(2 + 2 + 1)
    assert got.work_s == pytest.approx((2 + 2 + 1 + 1) / 2)
    assert got.ideal_s == got.chain_s
    assert got.served_s == pytest.approx(1.0 + 0.5 + 0.5)


def test_the_batch_limit_bounds_many_parallel_requests() -> None:
    log = [_req(0.0, 1.0, f"q{i}", "abcd") for i in range(8)]
    got = ideal(log, _decode, prefill_s=0.0, decode_s=1.0, max_batch=2)
    assert (got.chain_s, got.work_s, got.ideal_s) == (4.0, 16.0, 16.0)


def test_the_replay_admits_first_come_first_served_under_the_batch_limit() -> None:
    # Two slots, costs 3, 1, 1, 3 sent together: the last one starts only at t=2 and ends at 5,
    # one more than the bound (the total over the slots, 4) that perfect packing would reach.
    assert replay([[], [], [], []], [3.0, 1.0, 1.0, 3.0], 2) == 5.0
    assert replay([[], [], [], []], [3.0, 1.0, 1.0, 3.0], 0) == 3.0  # no limit: the longest


def test_the_replay_sends_a_request_when_what_it_depends_on_has_finished() -> None:
    # 1 continues 0, 2 waits for both 0 and 1; 3 depends on nothing and runs beside them.
    assert replay([[], [0], [0, 1], []], [2.0, 3.0, 1.0, 4.0], 0) == 6.0
    # One slot: 0 (0-2), 3 (2-6: it was sent at 0, before 1 was ready), 1 (6-9), 2 (9-10).
    assert replay([[], [0], [0, 1], []], [2.0, 3.0, 1.0, 4.0], 1) == 10.0


def test_the_ideal_replays_the_logged_requests() -> None:
    log = [_req(0.0, 1.0, "ab", "cd"), _req(1.5, 2.0, "abcd\n", "ef", cached=3),
           _req(0.0, 3.0, "zz", "q")]
    got = ideal(log, _decode, prefill_s=0.0, decode_s=1.0, max_batch=1)
    # Served costs 1, 0.5, 3 on one slot, in the order sent: ab (0-1), zz (1-4), abcd (4-4.5).
    assert got.queued_s == pytest.approx(4.5)
    assert got.served_s == pytest.approx(4.5)  # here the total over one slot is the same


def test_questions_run_in_turn_add_up_their_ideals() -> None:
    log = [_req(0.0, 1.0, "Q1: a", "bc"), _req(2.0, 3.0, "Q2: a", "bcd"),
           _req(0.0, 0.5, "Q1: a", warm=True)]
    apart = summarize(log, _decode, prefill_s=0.0, decode_s=1.0, max_batch=0)
    in_turn = summarize(log, _decode, prefill_s=0.0, decode_s=1.0, max_batch=0,
                        in_turn=["Q1", "Q2"])
    assert apart.ideal.ideal_s == 3.0 and in_turn.ideal.ideal_s == 5.0
    assert (in_turn.requests, in_turn.generations, in_turn.prefilled) == (3, 2, 15)


def test_the_scaling_exponent_is_the_slope_in_log_log() -> None:
    forks = [16, 64, 256, 1024]
    assert slope(forks, [3 * n for n in forks]) == pytest.approx(1.0)
    assert slope(forks, [n ** 0.5 for n in forks]) == pytest.approx(0.5)
