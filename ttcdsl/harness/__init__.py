"""Harnesses: run one compiled strategy over many inputs, on an entered backend.

    dataset   every line of a JSONL file, resumably, one result line each (`ttc run --input`)
    curves    token-matched accuracy curves over a swept parameter (`ttc bench`)

They sit between the command line and the runtime: they take parsed values (plans, `RunOptions`,
given arguments, items) and never argparse namespaces; their input mistakes are `HarnessError`s
whose messages name roles ("the input file ..."), which the command line rewords with its flags.
"""

from ttcdsl.harness._errors import WORDS, HarnessError

__all__ = ["WORDS", "HarnessError"]
