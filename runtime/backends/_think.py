"""Where a backend learns a reasoning model's thinking tags.

`tags_of_parser` reads the name of an SGLang reasoning parser (``--reasoning-parser``, reported
by ``/get_server_info`` and ``/get_model_info`` as ``reasoning_parser``, which `parser_of_info`
reads out of either answer); `tags_of_template`
reads a chat template (a GGUF file's ``tokenizer.chat_template``).  Both say None when they
cannot tell; a parser SGLang has but whose tags are not plain text pairs (e.g. gpt-oss's
channels) is refused with a message naming ``--think-tags``, never guessed.
"""

from __future__ import annotations

import msgspec

from ttcdsl.errors import BackendError

__all__ = ["PARSER_TAGS", "parser_of_info", "tags_of_parser", "tags_of_template"]

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


class _Info(msgspec.Struct):
    reasoning_parser: str | None = None


def parser_of_info(body: bytes) -> str | None:
    """The ``reasoning_parser`` of a model or server info answer; None when it names none or is
    not a JSON object."""
    try:
        return msgspec.json.decode(body, type=_Info).reasoning_parser
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


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
