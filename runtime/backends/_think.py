"""Where a backend learns a reasoning model's thinking tags.

`tags_of_parser` reads the name of an SGLang reasoning parser (``--reasoning-parser``, reported
by ``/get_server_info`` and ``/get_model_info`` as ``reasoning_parser``); `tags_of_template`
reads a chat template (a GGUF file's ``tokenizer.chat_template``).  Both say None when they
cannot tell; a parser SGLang has but whose tags are not plain text pairs (e.g. gpt-oss's
channels) is refused with a message naming ``--think-tags``, never guessed.
"""

from __future__ import annotations

from ttcdsl.errors import BackendError

__all__ = ["PARSER_TAGS", "tags_of_parser", "tags_of_template"]

THINK = ("<think>", "</think>")

# SGLang's reasoning parsers (python/sglang/srt/parser/reasoning_parser.py) and their tags.
PARSER_TAGS: dict[str, tuple[str, str]] = {
    "deepseek-r1": THINK,
    "deepseek-v3": THINK,
    "qwen3": THINK,
    "qwen3-thinking": THINK,
    "glm45": THINK,
    "minimax": THINK,
    "minimax-append-think": THINK,
    "step3": THINK,
    "interns1": THINK,
    "kimi": ("◁think▷", "◁/think▷"),
}


def tags_of_parser(parser: str | None) -> tuple[str, str] | None:
    """The tags of an SGLang reasoning parser; None for no parser."""
    if not parser:
        return None
    tags = PARSER_TAGS.get(parser)
    if tags is None:
        raise BackendError(
            f"the server's reasoning parser {parser!r} has no plain thinking tags ttcdsl knows; "
            "pass them with --think-tags OPEN,CLOSE"
        )
    return tags


def tags_of_template(template: str | None) -> tuple[str, str] | None:
    """The tags a chat template writes, when it writes a known pair; else None."""
    if not template:
        return None
    for tags in dict.fromkeys(PARSER_TAGS.values()):
        if all(tag in template for tag in tags):
            return tags
    return None
