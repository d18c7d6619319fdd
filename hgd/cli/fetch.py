"""``python -m hgd.cli.fetch [MODEL ...]``: download, verify, convert and cache the competition
classifiers' public weights (:mod:`hgd.zoo.fetch`)."""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence

from hgd.cli import run_main
from hgd.zoo import cache
from hgd.zoo.fetch import SOURCES, TIMEOUT_S, cache_status, fetch


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hgd.cli.fetch",
        description="Download the competition classifiers' public weights, verify them (publisher's hash, "
                    "else the SHA-256 recorded at the first download), convert them to Keras and cache them.")
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help=f"models to fetch (default: all four): {', '.join(m.value for m in SOURCES)}")
    parser.add_argument("--cache-dir", type=pathlib.Path, default=None,
                        help=f"the cache (default ${cache.CACHE_ENV}, else ~/.cache/hgd-toolkit); the toolkit "
                             f"reads ${cache.CACHE_ENV}, so point it here too")
    parser.add_argument("--source-dir", type=pathlib.Path, default=None,
                        help="take the published files from this folder (named as in the URLs) instead of "
                             "downloading them")
    parser.add_argument("--force", action="store_true", help="convert again even if already cached")
    parser.add_argument("--discard-downloads", action="store_true",
                        help="delete downloaded files after conversion (default: keep them in <cache>/downloads)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds without data before giving up")
    parser.add_argument("--list", action="store_true", help="show each model's URL, checks and cache state; fetch nothing")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: exit 0 if every model is available, 1 if one failed."""
    args = parse_args(argv)

    def body() -> int:
        directory = args.cache_dir or cache.cache_dir()
        if args.list:
            print(cache_status(directory))
            return 0
        fetchable = [m.value for m in SOURCES]
        unknown = [m for m in args.models if m not in fetchable]
        if unknown:
            raise ValueError(f"no published weights to fetch for {unknown}; fetchable: {fetchable}")
        failed = 0
        for model in args.models or fetchable:
            try:
                done = fetch(model, directory=directory, source_dir=args.source_dir, force=args.force,
                             keep_download=not args.discard_downloads, timeout=args.timeout)
            except (OSError, ValueError) as exc:  # hash mismatch, conversion, missing file, network
                print(f"ERROR: {model}: {exc}", file=sys.stderr)
                failed += 1
                continue
            print(f"{model}: {done.action} {done.weights} (source SHA-256 {done.source_sha256}, {done.origin})")
        return 1 if failed else 0

    run_main(body)


if __name__ == "__main__":
    main()
