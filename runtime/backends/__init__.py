"""Model backends: `sim` (in-process simulator), `sglang` (HTTP), `local` (llama.cpp), `openai`."""
