"""``python -m hgd.cli.runner validate``: good submissions pass, bad ones fail, archives are extracted safely."""

from __future__ import annotations

import io
import json
import pathlib
import shutil
import tarfile
import zipfile

import pytest

from hgd.cli import runner as cli

SUBMISSIONS = pathlib.Path(__file__).resolve().parent / "submissions"
FAST = ["--num-images", "6", "--seed", "0", "--time-limit", "60"]


def validate(path, capsys) -> tuple[int, str]:
    status = cli.main(["validate", str(path), *FAST])
    return status, capsys.readouterr().out


@pytest.mark.parametrize("name", ["noop", "constant"])
def test_good_submissions_are_valid(name, capsys):
    status, out = validate(SUBMISSIONS / name, capsys)
    assert status == 0, out
    assert "\nVALID: " in out and "outputs complete and well-formed" in out


def test_targeted_attack_gets_targets_and_out_of_box_pixels_warn(capsys):
    """pixel_target sets pixel (0, 0) from random targets 1..1000: far outside the box, a warning only."""
    status, out = validate(SUBMISSIONS / "pixel_target", capsys)
    assert status == 0, out
    assert "go outside the eps=" in out and "\nVALID: " in out


def test_broken_outputs_only_warn(capsys):
    status, out = validate(SUBMISSIONS / "messy", capsys)
    assert status == 0, out
    assert "WARNING: 1 of 6 adversarial images missing" in out or "missing" in out
    assert "unreadable" in out and "VALID" in out


def test_crashing_submission_is_invalid(capsys):
    status, out = validate(SUBMISSIONS / "crasher_defense", capsys)
    assert status == 1 and "exited with 1" in out and "INVALID" in out
    assert "cannot load my model" in out  # the end of its output is shown


def test_missing_metadata_is_invalid(tmp_path, capsys):
    shutil.copytree(SUBMISSIONS / "noop", tmp_path / "sub")
    (tmp_path / "sub" / "metadata.json").unlink()
    status, out = validate(tmp_path / "sub", capsys)
    assert status == 1 and "no metadata.json" in out


def test_non_executable_entry_point_is_invalid(tmp_path, capsys):
    shutil.copytree(SUBMISSIONS / "noop", tmp_path / "sub")
    (tmp_path / "sub" / "run_attack.sh").chmod(0o644)
    status, out = validate(tmp_path / "sub", capsys)
    assert status == 1 and "not executable" in out


def test_metadata_needs_both_containers(tmp_path, capsys):
    shutil.copytree(SUBMISSIONS / "noop", tmp_path / "sub")
    meta = json.loads((tmp_path / "sub" / "metadata.json").read_text())
    del meta["container_gpu"]
    (tmp_path / "sub" / "metadata.json").write_text(json.dumps(meta))
    status, out = validate(tmp_path / "sub", capsys)
    assert status == 1 and "container_gpu" in out


def test_tar_gz_and_zip_archives_are_valid(tmp_path, capsys):
    tgz = tmp_path / "noop.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(SUBMISSIONS / "noop", arcname="noop")  # one top folder: used as the root
    status, out = validate(tgz, capsys)
    assert status == 0, out
    archive = tmp_path / "noop.zip"
    with zipfile.ZipFile(archive, "w") as zf:  # files at the root; the exec bit travels in external_attr
        for path in (SUBMISSIONS / "noop").iterdir():
            zf.write(path, arcname=path.name)
    status, out = validate(archive, capsys)
    assert status == 0, out


def _tar_with(path: pathlib.Path, name: str, *, link: str | None = None) -> None:
    with tarfile.open(path, "w:gz") as tf:
        tf.add(SUBMISSIONS / "noop" / "metadata.json", arcname="metadata.json")
        tf.add(SUBMISSIONS / "noop" / "run_attack.sh", arcname="run_attack.sh")
        info = tarfile.TarInfo(name)
        if link is not None:
            info.type, info.linkname = tarfile.SYMTYPE, link
            tf.addfile(info)
        else:
            data = b"#!/bin/sh\necho gotcha\n"
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("member, link, reason", [
    ("../evil.sh", None, "'..'"),
    ("/tmp/evil.sh", None, "absolute path"),
    ("innocent", "../../etc/passwd", "link to"),
])
def test_unsafe_tar_members_are_rejected(tmp_path, capsys, member, link, reason):
    archive = tmp_path / "sub" / "bad.tar.gz"
    archive.parent.mkdir()
    _tar_with(archive, member, link=link)
    status, out = validate(archive, capsys)
    assert status == 1 and "unsafe archive member" in out and reason in out
    assert not (tmp_path / "evil.sh").exists()


def test_unsafe_zip_member_is_rejected(tmp_path, capsys):
    archive = tmp_path / "sub" / "bad.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(SUBMISSIONS / "noop" / "metadata.json", arcname="metadata.json")
        zf.writestr("../evil.sh", "#!/bin/sh\n")
    status, out = validate(archive, capsys)
    assert status == 1 and "unsafe archive member '../evil.sh'" in out
    assert not (tmp_path / "evil.sh").exists()


def test_not_a_submission(tmp_path, capsys):
    (tmp_path / "file.txt").write_text("hello")
    status, out = validate(tmp_path / "file.txt", capsys)
    assert status == 1 and "neither a folder nor" in out
    assert cli.main(["validate", str(tmp_path / "absent")]) == 1
