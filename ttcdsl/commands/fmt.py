"""`ttc fmt FILE... [--check] [--diff]`: rewrite .ttc files in the canonical layout.

Without flags each file that is not already formatted is rewritten in place (atomically: a
temporary file beside it, then a rename).  `--check` writes nothing and exits 1 if some file
would change, naming it; `--diff` writes nothing and prints a unified diff.  `-` formats
standard input to standard output.  A source larger than the compiler takes
(`MAX_SOURCE_BYTES`), from a file or from an endless standard input, is one error line.  A file with a syntax error is never touched: its error is
printed and the exit status is 1.  Formatting keeps comments (see `ttcdsl.fmt`).
"""

from __future__ import annotations

import argparse
import difflib
import errno
import os
import stat
import sys
import tempfile
from pathlib import Path

from ttcdsl.errors import TTCSyntaxError
from ttcdsl.fmt import format_source
from ttcdsl.program import MAX_SOURCE_BYTES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fmt", help="format .ttc files in the canonical layout")
    p.add_argument("files", nargs="+", metavar="FILE", help="files to format ('-' for stdin)")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if some file would be reformatted")
    p.add_argument("--diff", action="store_true", help="write nothing; print a unified diff")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    failed = changed = unchanged = 0
    for file in args.files:
        try:
            raw = _read_stdin() if file == "-" else _read(file)
        except _TooLarge as exc:
            print(f"ttc: error: {file}: {exc}", file=sys.stderr)
            failed += 1
            continue
        except OSError as exc:
            print(f"ttc: error: {file}: cannot read it ({exc.strerror or exc})", file=sys.stderr)
            failed += 1
            continue
        except UnicodeDecodeError:
            print(f"ttc: error: {file}: not UTF-8 text", file=sys.stderr)
            failed += 1
            continue
        name = "<stdin>" if file == "-" else file
        # Read line ends as the compiler does (universal newlines); write "\n".
        source = raw.replace("\r\n", "\n").replace("\r", "\n")
        try:
            formatted = format_source(source, name)
        except TTCSyntaxError as exc:
            print(exc.render(), file=sys.stderr)
            failed += 1
            continue
        if file == "-" and not (args.check or args.diff):
            sys.stdout.write(formatted)
            continue
        if formatted == raw:
            unchanged += 1
            continue
        changed += 1
        if args.diff:
            sys.stdout.writelines(difflib.unified_diff(
                raw.splitlines(keepends=True), formatted.splitlines(keepends=True),
                fromfile=f"{name} (original)", tofile=f"{name} (formatted)",
            ))
        if args.check:
            print(f"would reformat {name}", file=sys.stderr)
        elif not args.diff:
            _write(Path(file), formatted)
            print(f"reformatted {name}", file=sys.stderr)
    _summary(changed, unchanged, failed, would=args.check or args.diff)
    if failed:
        return 1
    return 1 if args.check and changed else 0


class _TooLarge(Exception):
    """A source past `MAX_SOURCE_BYTES` (the limit the compiler puts on program files)."""


def _read_stdin() -> str:
    """Standard input as text, read as universal newlines like a file; at most
    `MAX_SOURCE_BYTES` are read, so an endless stream (``yes | ttc fmt -``) ends in an error."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is not None:
        data = stream.read(MAX_SOURCE_BYTES + 1)
    else:  # a text stream without bytes under it (a test's StringIO)
        data = sys.stdin.read(MAX_SOURCE_BYTES + 1).encode()
    if len(data) > MAX_SOURCE_BYTES:
        raise _TooLarge(f"standard input holds more than {MAX_SOURCE_BYTES} bytes, too large for a "
                        ".ttc file")
    return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


def _read(file: str) -> str:
    if "\0" in file:
        raise OSError(errno.EINVAL, "not a valid file name (it contains a NUL byte)")
    info = os.stat(file)
    if not stat.S_ISREG(info.st_mode):  # a device would never end, a folder cannot be read
        raise OSError(errno.EINVAL, "not a regular file; expected a .ttc file")
    if info.st_size > MAX_SOURCE_BYTES:
        raise _TooLarge(f"too large for a .ttc file ({info.st_size} bytes)")
    # newline="" keeps "\r\n" as written, so a file with Windows line ends counts as changed.
    with open(file, encoding="utf-8", newline="") as f:
        return f.read()


def _write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _summary(changed: int, unchanged: int, failed: int, would: bool) -> None:
    def files(n: int) -> str:
        return f"{n} file{'s' if n != 1 else ''}"

    parts = []
    if changed:
        parts.append(f"{files(changed)} {'would be ' if would else ''}reformatted")
    if unchanged:
        parts.append(f"{files(unchanged)} already formatted")
    if failed:
        parts.append(f"{files(failed)} with errors")
    if parts:
        print(", ".join(parts), file=sys.stderr)
