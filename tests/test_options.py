"""The command-line options shared by `ttc` commands (`ttcdsl.commands._options`): declared once,
validated while parsing, read into the runtime's option structs, and the harnesses' messages
reworded with the flags."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ttcdsl.cli import build_parser, main
from ttcdsl.commands._options import FLAGS, backend_options, harness_flags, run_options
from ttcdsl.errors import UsageError
from ttcdsl.harness import WORDS, HarnessError
from ttcdsl.runtime.backends.factory import BackendOptions
from ttcdsl.runtime.executor import RunOptions

REPO = Path(__file__).resolve().parents[1]
SC = str(REPO / "programs" / "self_consistency.ttc")


def _subparser(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {opt: a for a in parser._actions for opt in a.option_strings}


def test_run_and_bench_share_one_declaration_of_each_run_and_backend_option() -> None:
    parser = build_parser()
    run, bench = _flags(_subparser(parser, "run")), _flags(_subparser(parser, "bench"))
    shared = ("--strategy", "--arg", "--seed", "--concurrency", "--budget", "--timeout",
              "--allow-verifier", "--backend", "--url", "--reward-url", "--sim-task", "--model",
              "--router", "--items")
    for flag in shared:
        assert run[flag].help == bench[flag].help and run[flag].type == bench[flag].type, flag
        assert run[flag].default == bench[flag].default, flag


def test_serve_and_sim_serve_share_the_address_options() -> None:
    parser = build_parser()
    serve, sim = _flags(_subparser(parser, "serve")), _flags(_subparser(parser, "sim", "serve"))
    for flag in ("--host", "--port"):
        assert (serve[flag].help, serve[flag].type, serve[flag].default) == (
            sim[flag].help, sim[flag].type, sim[flag].default), flag


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", SC, "--concurrency", "0"], "argument --concurrency: expected a positive integer, got 0"),
        (["run", SC, "--items", "x"], "argument --items: expected a positive integer, got 'x'"),
        (["run", SC, "--timeout", "-1"], "argument --timeout: must be positive, got -1"),
        (["run", SC, "--timeout", "soon"], "argument --timeout: expected a number of seconds, got 'soon'"),
        (["bench", SC, "--input", "x", "--repeats", "0"], "argument --repeats: expected a positive integer, got 0"),
        (["sim", "serve", "--port", "65536"], "argument --port: must be between 0 and 65535, got 65536"),
        (["trace", "show", "t.jsonl", "--top", "-2"], "argument --top: expected a positive integer, got -2"),
    ],
)
def test_bad_values_are_one_line_usage_errors_while_parsing(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert err.count("\n") == 1 and message in err


def test_parsed_options_become_the_runtime_structs() -> None:
    args = build_parser().parse_args(
        ["run", SC, "--seed", "3", "--concurrency", "4", "--budget", "500", "--timeout", "2.5",
         "--allow-verifier", "--sequential", "--url", "http://127.0.0.1:9", "--reward-url",
         "http://127.0.0.1:8", "--no-router"])
    trace = object()
    assert run_options(args, trace) == RunOptions(seed=3, concurrency=4, budget=500, timeout_s=2.5,
                                                  allow_verifier=True, sequential=True, trace=trace)
    assert backend_options(args) == BackendOptions(url="http://127.0.0.1:9",
                                                   reward_url="http://127.0.0.1:8", router=False)
    assert backend_options(args).resolved() == "sglang"


def test_every_harness_role_has_a_flag() -> None:
    assert set(FLAGS) == set(WORDS)


def test_harness_messages_are_reworded_with_flags_and_nothing_else() -> None:
    with pytest.raises(UsageError) as info, harness_flags():
        raise HarnessError("{output} {path} already has results: pass {resume} to continue it",
                           path="out {x}.jsonl")
    assert not isinstance(info.value, HarnessError)
    assert str(info.value) == "--output out {x}.jsonl already has results: pass --resume to continue it"
    with pytest.raises(ValueError, match="not a harness error"), harness_flags():
        raise ValueError("not a harness error")
