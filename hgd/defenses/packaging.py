"""A defense configuration as a self-contained submission folder (``python -m hgd.cli.package CONFIG OUT_DIR``).

A profile such as ``defense/profiles/competition4.json`` runs from the repository's ``defense/`` with
``HGD_DEFENSE_PROFILE``; the competition wanted one folder (zipped) whose entry point needs no
environment. Packaging writes that folder: the entry point and metadata of the submission the
configuration belongs to, the configuration as ``config.json`` (what runs the defense: no notes, no
training recipe), and exactly the denoiser weights it names, under ``weights/``. Missing weights are
refused (nothing half-packaged), and the result runs with ``./run_defense.sh INPUT_DIR OUTPUT_FILE``
alone (``python -m hgd.cli.runner validate`` checks it).
"""

from __future__ import annotations

import json
import pathlib
import shutil

ENTRY_FILES = ("run_defense.sh", "metadata.json")


def submission_root(config_path: pathlib.Path) -> pathlib.Path:
    """The folder holding the configuration's entry point: its own folder, or the one above (profiles/)."""
    for folder in (config_path.parent, config_path.parent.parent):
        if all((folder / name).is_file() for name in ENTRY_FILES):
            return folder
    raise FileNotFoundError(f"{config_path}: no {' and '.join(ENTRY_FILES)} beside it or one folder up; "
                            "a defense configuration lives in its submission folder (or its profiles/)")


def package_defense(config_path: pathlib.Path, out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Write the submission folder ``out_dir`` for ``config_path``; returns the files written."""
    from hgd.defenses.defended import load_config  # deferred: keras start-up is not needed to print --help

    config = load_config(config_path)
    config.require_weights()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"{out_dir} is not empty; package into a new folder")
    root = submission_root(config_path)
    raw = json.loads(config_path.read_text())
    sources = {spec.weights.name: spec.weights for spec in config.denoisers()}
    if len(sources) != len(config.denoisers()):
        raise ValueError(f"{config_path}: two denoisers share a weight file name; rename one")
    _point_at_weights(raw)
    raw.pop("notes", None)  # a profile's notes say how to run it as a profile, which no longer applies
    raw.pop("training", None)  # the recipe stays with its source: its paths (a teacher's weights) point there
    (out_dir / "weights").mkdir(parents=True, exist_ok=True)
    written = []
    for name in ENTRY_FILES:
        written.append(pathlib.Path(shutil.copy2(root / name, out_dir / name)))
    for name, source in sources.items():
        written.append(pathlib.Path(shutil.copyfile(source, out_dir / "weights" / name)))
    (out_dir / "config.json").write_text(json.dumps(raw, indent=1) + "\n")
    written.append(out_dir / "config.json")
    return written


def denoiser_entries(raw: dict) -> list[dict]:
    """The denoiser entries of a raw (parsed JSON) defense configuration: the shared one and the members'
    own, as the dicts themselves, for tools that rewrite a configuration's copy."""
    return [entry for entry in [raw.get("denoiser"), *(member.get("denoiser") for member in raw["members"])]
            if entry is not None]


def _point_at_weights(raw: dict) -> None:
    """Rewrite every denoiser's weight path of a raw configuration to ``weights/<file name>``."""
    for entry in denoiser_entries(raw):
        entry["weights"] = f"weights/{pathlib.PurePath(entry['weights']).name}"
