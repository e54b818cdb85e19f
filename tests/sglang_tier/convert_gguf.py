"""Convert a GGUF checkpoint to a Hugging Face (safetensors, bf16) checkpoint SGLang can load.

Run inside the tier venv (it needs torch, transformers and gguf):
    python convert_gguf.py MODEL.gguf OUT_DIR

SGLang cannot load GGUF on CPU.  transformers dequantises the GGUF on load but still marks the
model as quantized, which `save_pretrained` refuses or records in config.json; the quantizer and
its config are dropped before saving so the result is a plain bf16 checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path


def convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.bfloat16)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: convert_gguf.py MODEL.gguf OUT_DIR", file=sys.stderr)
        return 2
    convert(Path(argv[0]), Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
