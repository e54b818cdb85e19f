"""One wall-time ratio against SGLang's frontend on the real engine (not a test).

    python -m bench.real_sglang [--forks 8] [--repeats 3] [--greedy] [--warmups 1]

Starts the real SGLang 0.5.23 CPU server of the real-SGLang tier (SmolLM2-135M-Instruct, the
tier's venv and model under ``$TTC_SGLANG_HOME``; ``scripts/sglang_tier.sh setup`` makes them),
then runs self-consistency with ``--forks`` forks on one question with both clients of
``python -m bench`` — ``bench.ttc_client`` (ttcdsl, the lean path: one warm-up, one batch request)
and ``bench/frontend.py`` (``sglang.lang``: ``fork`` + ``gen``) — interleaved, ``--repeats``
times, and prints each pair's wall and CPU and the median ratios.  Same program, same prompt and
sampling settings for both (read from ``programs/self_consistency.ttc``).  The server decodes
about 25-45 tokens/s on 2 cores and busy-polls one of them, so expect minutes, and read the
ratio, not the seconds.  The server is always stopped at the end.

Sampled at the program's temperature (0.7), the CPU engine's outputs are not reproducible run to
run, and a run lasts as long as its longest fork, so one pair's wall ratio mostly measures which
client drew the longer chain.  ``--greedy`` runs a copy of the program at temperature 0 for both
clients: every fork then writes the same chain in both clients, and the ratio compares the clients.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.procs import BenchError, post, run_json
from bench.workloads import ROOT, Workload, questions_of, sc, spec
from ttcdsl.launch import free_port, sglang_home, sglang_launch

QUESTION_DATA = ROOT / "data" / "sim_math.jsonl"


def flush(url: str, timeout: float = 60.0) -> None:
    """Empty the server's prefix cache (refused while requests still run: retry)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            post(url + "/flush_cache")
            return
        except BenchError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def greedy(workload: Workload, folder: Path) -> Workload:
    """``workload`` on a copy of its program that samples at temperature 0."""
    source = (ROOT / workload.program).read_text(encoding="utf-8")
    if "temperature = 0.7" not in source:
        raise BenchError(f"{workload.program}: no 'temperature = 0.7' to make greedy")
    copy = folder / Path(workload.program).name
    copy.write_text(source.replace("temperature = 0.7", "temperature = 0"), encoding="utf-8")
    return dataclasses.replace(workload, program=str(copy))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--forks", type=int, default=8, help="self-consistency forks (default 8)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved pairs (default 3)")
    ap.add_argument("--greedy", action="store_true",
                    help="temperature 0 for both clients (reproducible chains)")
    ap.add_argument("--warmups", type=int, default=1,
                    help="unmeasured pairs first, while the engine warms up (default 1)")
    args = ap.parse_args(argv)
    # A SIGTERM unwinds like Ctrl-C, so the server below is stopped whatever ends the run.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    home = sglang_home()
    python, model = home / "venv" / "bin" / "python", home / "models" / "SmolLM2-135M-Instruct"
    if not (python.exists() and model.exists()):
        print(f"bench real_sglang: no SGLang venv/model under {home}; run scripts/sglang_tier.sh setup",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ttc-real-") as tmp:
        folder = Path(tmp)
        workload = sc(args.forks)
        if args.greedy:
            workload = greedy(workload, folder)
        spec_path = folder / "spec.json"
        spec_path.write_text(json.dumps(spec(workload, questions_of(QUESTION_DATA)[:1])))
        launch = sglang_launch(str(model), port=free_port(), cpu=True, python=str(python))
        with launch.process(log=folder / "sglang.log") as server:
            print(f"starting SGLang at {launch.url} (30-60 s)...", file=sys.stderr)
            server.wait_ready(600.0)
            url = launch.url
            # The first requests after start are slow (shape warm-up): unmeasured pairs first.
            # The two clients take turns going first, so a drift of the engine's speed over a
            # pair favours neither.
            pairs: list[tuple[dict[str, float], dict[str, float]]] = []
            for repeat in range(-args.warmups + 1, args.repeats + 1):
                clients = {
                    "ttcdsl": [sys.executable, "-m", "bench.ttc_client", url, str(spec_path), "1"],
                    "frontend": [str(python), "-I", str(ROOT / "bench" / "frontend.py"), url,
                                 str(spec_path)],
                }
                order = list(clients) if repeat % 2 else list(clients)[::-1]
                got = {}
                for name in order:
                    flush(url)
                    got[name] = run_json(clients[name], cwd=ROOT, timeout=1800, what=f"the {name} client")
                ttc, fe = got["ttcdsl"], got["frontend"]
                label = "warm-up" if repeat <= 0 else f"repeat {repeat}"
                print(f"{label} ({order[0]} first): ttcdsl wall {ttc['wall_s']:.2f} s cpu "
                      f"{ttc['cpu_s']:.3f} s | frontend wall {fe['wall_s']:.2f} s cpu {fe['cpu_s']:.3f} s"
                      f" | answers {ttc['answers']} / {fe['answers']}", flush=True)
                if repeat > 0:
                    pairs.append((ttc, fe))
    wall = [t["wall_s"] / f["wall_s"] for t, f in pairs]
    cpu = [t["cpu_s"] / f["cpu_s"] for t, f in pairs]
    mode = "greedy" if args.greedy else "temperature 0.7"
    print(f"self-consistency, {args.forks} forks ({mode}), real SGLang on CPU: wall ttcdsl/frontend median "
          f"{statistics.median(wall):.2f}x (range {min(wall):.2f}-{max(wall):.2f}); client CPU "
          f"median {statistics.median(cpu):.2f}x (range {min(cpu):.2f}-{max(cpu):.2f})")
    if args.greedy:
        # Greedy chains are the same for both clients, so a pair whose answers differ did not
        # run the same work (one client's requests failed or were cut short): leave it out.
        same = [t["wall_s"] / f["wall_s"] for t, f in pairs if t["answers"] == f["answers"]]
        if same:
            print(f"pairs with the same answers ({len(same)} of {len(pairs)}): wall median "
                  f"{statistics.median(same):.2f}x (range {min(same):.2f}-{max(same):.2f})")
        else:
            print(f"no pair of the {len(pairs)} gave the same answers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
