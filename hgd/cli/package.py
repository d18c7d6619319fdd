"""``python -m hgd.cli.package CONFIG OUT_DIR``: a defense configuration as a self-contained submission
folder (:mod:`hgd.defenses.packaging`)."""

from __future__ import annotations

import argparse
import pathlib
import sys

from hgd.cli import run_main
from hgd.defenses.packaging import package_defense


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hgd.cli.package",
                                     description="Package a defense configuration as a self-contained submission folder.")
    parser.add_argument("config", type=pathlib.Path, help="a defense config.json or profile")
    parser.add_argument("out_dir", type=pathlib.Path, help="the submission folder to write (new or empty)")
    args = parser.parse_args(argv)

    def body() -> int:
        written = package_defense(args.config, args.out_dir)
        size = sum(path.stat().st_size for path in written)
        print(f"packaged {args.config} -> {args.out_dir} ({len(written)} files, {size / 2**20:.1f} MiB); "
              f"run it with {args.out_dir / 'run_defense.sh'} INPUT_DIR OUTPUT_FILE")
        return 0

    run_main(body)


if __name__ == "__main__":
    main(sys.argv[1:])
