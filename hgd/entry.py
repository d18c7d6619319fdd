"""What every submission entry point shares: logging on stderr and bad input as one clear line.

A competition submission is judged by its exit status and its outputs; a traceback helps nobody.
Bad input that stops the whole run (a missing folder, a malformed config) becomes ``ERROR: ...``
on stderr and exit status 2; per-file problems never get here (they are reported and skipped).
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
from collections.abc import Callable
from typing import NoReturn

EXIT_REFUSED = 2


def run_main(body: Callable[[], int]) -> NoReturn:
    """Run an entry point's body and exit with its status; bad input exits 2 with one line."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        code = body()
    except (FileNotFoundError, NotADirectoryError, ValueError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        code = EXIT_REFUSED
    sys.exit(code)


def named_path(text: str) -> tuple[str, pathlib.Path]:
    """An argparse type for ``NAME=PATH`` (a labelled run folder, e.g. a table row or a plot line)."""
    name, sep, path = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, pathlib.Path(path).expanduser()
