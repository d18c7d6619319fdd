"""The command-line modules (``python -m hgd.cli.NAME``): each parses arguments and calls the library;
nothing imports from them. This module holds what every command shares: logging on stderr, bad input
as one clear line, and the argument types more than one command takes.

A competition submission is judged by its exit status and its outputs; a traceback helps nobody.
Bad input that stops the whole run (a missing folder, a malformed config) becomes ``ERROR: ...``
on stderr and exit status 2, a defense that must not run (:class:`hgd.defenses.MissingWeights`)
``REFUSED: ...`` and exit status 2; per-file problems never get here (they are reported and skipped).
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
from collections.abc import Callable
from typing import NoReturn

from hgd.cluster import ClusterUnavailable
from hgd.defenses import MissingWeights

EXIT_REFUSED = 2


def run_main(body: Callable[[], int]) -> NoReturn:
    """Run an entry point's body and exit with its status; bad input exits 2 with one line."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        code = body()
    except MissingWeights as refusal:
        print(f"REFUSED: {refusal}", file=sys.stderr)
        code = EXIT_REFUSED
    except (FileNotFoundError, NotADirectoryError, ValueError, ClusterUnavailable) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        code = EXIT_REFUSED
    sys.exit(code)


def add_cluster_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``--cluster ADDRESS``: spread ``what`` over a Ray cluster (the results are the same as here)."""
    parser.add_argument("--cluster", metavar="ADDRESS", default=None,
                        help=f"spread {what} over the Ray cluster at ADDRESS (HOST:PORT, ray://HOST:PORT, or 'auto' "
                             "for the one started on this machine; pip install -e \".[cluster]\"); the results are "
                             "the same as on one machine")


def join_cluster(address: str | None) -> bool:
    """Joins the cluster ``--cluster`` names, if any; whether there is one. Raises
    :class:`~hgd.cluster.ClusterUnavailable` (``run_main`` prints it) when it cannot be joined."""
    if address is None:
        return False
    from hgd.cluster import connect

    connect(address)
    return True


def named_path(text: str) -> tuple[str, pathlib.Path]:
    """An argparse type for ``NAME=PATH`` (a labelled run folder, e.g. a table row or a plot line)."""
    name, sep, path = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, pathlib.Path(path).expanduser()


def parse_epsilon(text: str) -> int:
    """MAX_EPSILON from a command line: an integer number of pixel levels, 0..255 (also the runner's --eps)."""
    try:
        value = int(text, 10)
    except ValueError:
        value = None
    if value is None or not 0 <= value <= 255:
        raise argparse.ArgumentTypeError(f"must be an integer number of pixel levels in 0..255, got {text!r}")
    return value
