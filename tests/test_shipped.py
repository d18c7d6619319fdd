"""The public surface: the shipped defenses by name (``hgd.load_defense``), from any install."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import hgd
from hgd.defenses import MissingWeights
from hgd.io.images import load_image

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLE_IMAGES = REPO / "sample_data" / "images"
IMAGES = ["28b7b933c8028c6e", "4b588649cd835d4c"]


def test_every_shipped_name_is_a_committed_config_read_strictly():
    names = hgd.list_defenses()
    assert names[0] == "hgd_lite" and {"undefended", "jpeg", "bit_depth", "competition4"} <= set(names)
    for name in names:
        path = hgd.shipped.config_path(name)
        assert path.is_file(), name
        assert path.resolve().is_relative_to(REPO.resolve())  # the competition folders themselves, no copy
        hgd.defense_config(name)  # the strict reader accepts every shipped config
    assert hgd.shipped.config_path("hgd_lite").resolve() == (REPO / "defense" / "config.json").resolve()
    committed = {REPO / "defense" / "config.json", *(REPO / "defense" / "profiles").glob("*.json"),
                 *(REPO / "baselines").glob("*/config.json")}
    assert {hgd.shipped.config_path(name).resolve() for name in names} == {p.resolve() for p in committed}


def test_unknown_names_and_transforms_are_refused_with_the_way_out():
    with pytest.raises(ValueError, match=r"no shipped defense 'hgd-lite'; shipped: \['hgd_lite'"):
        hgd.load_defense("hgd-lite")
    with pytest.raises(ValueError, match=r"hgd.defense_config\('jpeg'\)"):
        hgd.load_defense("jpeg")
    with pytest.raises(MissingWeights, match="fgd_ens3_adv_inception_v3"):
        hgd.load_defense("competition4")  # its four full-width denoisers are not committed


def _classify_with_load_defense(python_path: pathlib.Path, cwd: pathlib.Path) -> dict:
    """Labels of IMAGES from ``hgd.load_defense("hgd_lite")`` in a fresh interpreter importing ``hgd``
    from ``python_path`` first, and where that ``hgd`` came from."""
    script = f"""
import json, numpy as np, hgd
from hgd.io.images import load_image
images = np.stack([load_image({str(SAMPLE_IMAGES)!r} + f"/{{i}}.png")[0] for i in {IMAGES!r}])
logits = np.asarray(hgd.load_defense("hgd_lite")(images))
print(json.dumps({{"file": hgd.__file__, "labels": logits.argmax(-1).tolist(), "shape": list(logits.shape)}}))
"""
    env = {**os.environ, "PYTHONPATH": str(python_path)}
    result = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_wheel_install_loads_the_shipped_defense_and_classifies_as_the_submission_does(tmp_path):
    """``pip install .`` without the checkout: the wheel carries the configs and weights as package data,
    and its model labels the images as the competition submission (``defense/``) does."""
    source, wheels = tmp_path / "source", tmp_path / "wheels"
    for name in ("pyproject.toml", "README.md"):  # what docker/build_image.sh builds the wheel from
        source.mkdir(exist_ok=True)
        shutil.copyfile(REPO / name, source / name)
    for name in ("hgd", "defense", "baselines"):
        shutil.copytree(REPO / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(source)], check=True, capture_output=True, timeout=600)
    (wheel,) = wheels.glob("hgd_toolkit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "hgd/shipped/defense/weights/fgd_lite_ensemble.weights.h5" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # what pip install puts in site-packages
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    found = _classify_with_load_defense(site, outside)
    assert pathlib.Path(found["file"]).resolve().is_relative_to(site.resolve()) and found["shape"] == [2, 1000]

    from hgd.defenses.submission import classify_folder
    from hgd.io.competition_csv import read_predictions_csv

    folder = tmp_path / "in"
    folder.mkdir()
    for image_id in IMAGES:
        (folder / f"{image_id}.png").write_bytes((SAMPLE_IMAGES / f"{image_id}.png").read_bytes())
    classify_folder(REPO / "defense" / "config.json", folder, tmp_path / "out.csv")
    submission = read_predictions_csv(tmp_path / "out.csv")
    assert [label + 1 for label in found["labels"]] == [submission[i] for i in IMAGES]
    images = np.stack([load_image(SAMPLE_IMAGES / f"{i}.png")[0] for i in IMAGES])
    assert images.shape == (2, 299, 299, 3)
