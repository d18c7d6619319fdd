"""The submission validator: is this folder or archive something the competition would accept?

What the organizers' validator checked, for one submission (a folder, or a
``.zip`` / ``.tar`` / ``.tar.gz`` / ``.tgz`` archive, extracted safely: a member
with an absolute path, a ``..`` component or a link leaving the archive rejects
the whole archive; an archive holding a single folder uses that folder as the
root, like EVAL's worker):

1. ``metadata.json``: ``type`` is attack / targeted_attack / defense, ``container``
   and ``container_gpu`` are non-empty strings, ``entry_point`` names an
   executable regular file inside the submission (a missing shebang only warns);
2. a run on random-noise 299x299 PNGs ``IMG0000.png``... (100 by default) with a
   random epsilon from {4, 8, 12, 16} (attacks) and random targets 1..1000
   (targeted attacks, ``target_class.csv``), under the time limit;
3. valid if it exits 0 within the time limit. Missing or malformed outputs
   (images absent, unreadable, of the wrong size or outside the eps box;
   ``result.csv`` absent, or lines missing or out of 1..1000) only warn.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Callable

import numpy as np

from hgd.io.competition_csv import read_predictions_csv
from hgd.io.images import IMAGE_SIZE, ImageError, load_image, save_png
from hgd.io.labels import NUM_LABELS
from hgd.runner.executors import Executor, RunResult
from hgd.runner.workdirs import force_rmtree
from hgd.runner.pieces import EVAL_EPSILONS
from hgd.runner.submissions import (DEFENSE_OUTPUT_FILE, AttackSubmission, DefenseSubmission, SubmissionError, SubmissionType,
                                    check_entry_point, read_metadata)

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
MAX_ARCHIVE_BYTES = 16 * 1024 ** 3
"""Refuse archives that would extract to more than this (zip bombs)."""


def is_archive(path: pathlib.Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _unsafe_name(name: str) -> str | None:
    """Why an archive member's name is unsafe to extract, or ``None``."""
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or re.match(r"^[A-Za-z]:", normalized):
        return "absolute path"
    if ".." in pathlib.PurePosixPath(normalized).parts:
        return "'..' in the path"
    return None


def extract_archive(archive: pathlib.Path, destination: pathlib.Path) -> pathlib.Path:
    """Extracts a submission archive safely; returns the submission's root folder.

    Raises:
        SubmissionError: an unsafe member (absolute path, ``..``, a link leaving the archive,
            a device), too large, or not a readable archive.
    """
    name = archive.name.lower()
    destination.mkdir(parents=True, exist_ok=True)
    try:
        if name.endswith(".zip"):
            _extract_zip(archive, destination)
        else:
            _extract_tar(archive, destination)
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as error:
        raise SubmissionError(f"cannot extract {archive.name}: {error}") from None
    entries = [p for p in destination.iterdir() if p.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir() and not (destination / "metadata.json").exists():
        return entries[0]
    return destination


def _extract_zip(archive: pathlib.Path, destination: pathlib.Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for info in members:
            reason = _unsafe_name(info.filename)
            if reason:
                raise SubmissionError(f"unsafe archive member {info.filename!r}: {reason}")
        if sum(info.file_size for info in members) > MAX_ARCHIVE_BYTES:
            raise SubmissionError(f"{archive.name} would extract to more than {MAX_ARCHIVE_BYTES} bytes")
        zf.extractall(destination)
        for info in members:  # zipfile drops permissions: restore the executable bits
            mode = (info.external_attr >> 16) & 0o777
            target = destination / info.filename
            if mode and not info.is_dir() and target.is_file():
                target.chmod(mode | stat.S_IRUSR | stat.S_IWUSR)


def _extract_tar(archive: pathlib.Path, destination: pathlib.Path) -> None:
    with tarfile.open(archive, "r:*") as tf:
        members = tf.getmembers()
        for member in members:
            reason = _unsafe_name(member.name)
            if reason is None and (member.issym() or member.islnk()):
                link = member.linkname
                base = pathlib.PurePosixPath(member.name).parent if member.issym() else pathlib.PurePosixPath()
                reason = _unsafe_name(link) or _unsafe_name((base / link).as_posix())
                reason = reason and f"link to {link!r} ({reason})"
            if reason is None and not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
                reason = "not a file, folder or link"
            if reason:
                raise SubmissionError(f"unsafe archive member {member.name!r}: {reason}")
        if sum(m.size for m in members) > MAX_ARCHIVE_BYTES:
            raise SubmissionError(f"{archive.name} would extract to more than {MAX_ARCHIVE_BYTES} bytes")
        if hasattr(tarfile, "data_filter"):
            tf.extractall(destination, filter="data")
        else:  # pragma: no cover - Python < 3.11.4; members were checked above
            tf.extractall(destination)


def _noise_images(folder: pathlib.Path, count: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    images = {}
    for k in range(count):
        name = f"IMG{k:04d}.png"
        images[name] = rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        save_png(folder / name, images[name])
    return images


def validate(path: pathlib.Path, *, executor: Executor, time_limit: float = 500.0, gpu: bool = False,
             num_images: int = 100, seed: int | None = None, say: Callable[[str], None] = print) -> bool:
    """Validates one submission folder or archive; prints what it finds; returns the verdict.

    Args:
        path: the submission folder or archive.
        executor: runs the submission (local or Docker).
        time_limit: seconds allowed for the run.
        gpu: run with the GPU image.
        num_images: random-noise images to run it on (the competition's validator used 100).
        seed: for the noise, the epsilon and the targets.
        say: where the messages go.
    """
    with tempfile.TemporaryDirectory(prefix="hgd-validate-") as tmp:
        scratch = pathlib.Path(tmp)
        try:
            return _validate(path, scratch, executor, time_limit, gpu, num_images, seed, say)
        finally:
            force_rmtree(scratch / "run")


def _validate(path: pathlib.Path, scratch: pathlib.Path, executor: Executor, time_limit: float, gpu: bool,
              num_images: int, seed: int | None, say: Callable[[str], None]) -> bool:
    """What :func:`validate` does, inside its scratch folder: the static checks, the run, the verdict."""
    try:
        checked = _check_submission(path, scratch, say)
    except SubmissionError as error:
        return _invalid(path, str(error), say)
    rng = np.random.default_rng(seed)
    input_dir, output_dir = _run_folders(scratch)
    images = _noise_images(input_dir, num_images, rng)
    if checked.kind is SubmissionType.DEFENSE:
        result = _run_defense(checked, executor, input_dir, output_dir, num_images, time_limit, gpu, say)
        epsilon = None
    else:
        epsilon = int(rng.choice(EVAL_EPSILONS))
        result = _run_attack(checked, executor, input_dir, output_dir, images, rng, epsilon, time_limit, gpu, say)
    say(f"exit code {result.exit_code}, {result.seconds:.1f} s" + (", stopped at the time limit"
                                                                   if result.timed_out else ""))
    if not result.ok:
        return _invalid(path, _run_failure(result, time_limit, say), say)
    _report_outputs(path, checked.kind, output_dir, images, epsilon, say)
    return True


def _invalid(path: pathlib.Path, reason: str, say: Callable[[str], None]) -> bool:
    """Say why the submission is invalid and give the verdict; returns ``False``, the verdict."""
    say(f"ERROR: {reason}")
    say(f"INVALID: {path}")
    return False


@dataclasses.dataclass(frozen=True)
class _Checked:
    """A submission whose metadata passed the checks: what running it needs."""

    root: pathlib.Path
    meta: dict
    entry_point: str
    kind: SubmissionType

    def container(self, gpu: bool) -> str:
        """The image the run uses."""
        return self.meta["container_gpu"] if gpu else self.meta["container"]


def _check_submission(path: pathlib.Path, scratch: pathlib.Path, say: Callable[[str], None]) -> _Checked:
    """The static checks, before anything runs: the submission's root and its ``metadata.json``.

    Raises:
        SubmissionError: the submission is invalid; the message says why.
    """
    root = _submission_root(path, scratch, say)
    meta = read_metadata(root)
    missing = [key for key in ("container", "container_gpu") if not (meta.get(key) or "").strip()]
    if missing:
        raise SubmissionError(f"metadata.json lacks {' and '.join(missing)} (the competition requires both)")
    entry_point = meta["entry_point"].strip()
    check_entry_point(root, entry_point)
    _warn_without_shebang(root, entry_point, say)
    kind = SubmissionType(meta["type"])
    say(f"OK: metadata.json: {kind.value}, entry point {entry_point}, container {meta['container']}, "
        f"container_gpu {meta['container_gpu']}")
    return _Checked(root, meta, entry_point, kind)


def _submission_root(path: pathlib.Path, scratch: pathlib.Path, say: Callable[[str], None]) -> pathlib.Path:
    """The submission's root folder: ``path`` itself, or where its archive was safely extracted.

    Raises:
        SubmissionError: ``path`` is neither a folder nor an archive, or the archive is unsafe or unreadable.
    """
    if is_archive(path):
        root = extract_archive(path, scratch / "extracted")
        say(f"extracted {path.name}; submission root: {root.relative_to(scratch / 'extracted') or '.'}")
        return root
    if path.is_dir():
        return path.resolve()
    raise SubmissionError(f"{path} is neither a folder nor a .zip/.tar/.tar.gz archive")


def _warn_without_shebang(root: pathlib.Path, entry_point: str, say: Callable[[str], None]) -> None:
    """Warn (only) when the entry point is neither a script with ``#!`` nor an ELF binary: it may not run."""
    with open(root / entry_point, "rb") as f:
        head = f.read(4)
    if not head.startswith(b"#!") and head != b"\x7fELF":
        say(f"WARNING: {entry_point} has no shebang line (#!); the container may not be able to run it")


def _run_folders(scratch: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """Fresh input and output folders for the run; the output one is writable by a container's user."""
    run_dir = scratch / "run"
    input_dir, output_dir = run_dir / "input", run_dir / "output"
    input_dir.mkdir(parents=True)
    output_dir.mkdir()
    output_dir.chmod(0o777)
    return input_dir, output_dir


def _run_defense(checked: _Checked, executor: Executor, input_dir: pathlib.Path, output_dir: pathlib.Path,
                 num_images: int, time_limit: float, gpu: bool, say: Callable[[str], None]) -> RunResult:
    """Run a defense on the noise images, as the competition's validator did."""
    submission = DefenseSubmission(name=checked.root.name, path=checked.root, type=checked.kind,
                                   entry_point=checked.entry_point, container=checked.meta["container"],
                                   container_gpu=checked.meta["container_gpu"])
    say(f"running it on {num_images} random-noise images ({executor.name} executor, image "
        f"{checked.container(gpu)})")
    return submission.run(executor, input_dir, output_dir, time_limit=time_limit, gpu=gpu)


def _run_attack(checked: _Checked, executor: Executor, input_dir: pathlib.Path, output_dir: pathlib.Path,
                images: dict[str, np.ndarray], rng: np.random.Generator, epsilon: int, time_limit: float, gpu: bool,
                say: Callable[[str], None]) -> RunResult:
    """Run an attack on the noise images with ``epsilon`` (and random targets if targeted), as the validator did."""
    if checked.kind is SubmissionType.TARGETED_ATTACK:
        targets = rng.integers(1, NUM_LABELS + 1, len(images))
        (input_dir / "target_class.csv").write_text(
            "".join(f"{name},{t}\n" for name, t in zip(images, targets)), encoding="utf-8")
    submission = AttackSubmission(name=checked.root.name, path=checked.root, type=checked.kind,
                                  entry_point=checked.entry_point, container=checked.meta["container"],
                                  container_gpu=checked.meta["container_gpu"])
    say(f"running it on {len(images)} random-noise images with eps={epsilon} "
        f"({executor.name} executor, image {checked.container(gpu)})")
    return submission.run(executor, input_dir, output_dir, epsilon, time_limit=time_limit, gpu=gpu)


def _run_failure(result: RunResult, time_limit: float, say: Callable[[str], None]) -> str:
    """Show the end of a failed run's output and say why it failed (the reason it is invalid)."""
    tail = "\n".join(result.log.strip().splitlines()[-20:])
    if tail:
        say("last lines of its output:\n" + tail)
    reason = (f"did not finish within the time limit of {time_limit:g} s" if result.timed_out
              else f"exited with {result.exit_code}, not 0")
    return f"the submission {reason}"


def _report_outputs(path: pathlib.Path, kind: SubmissionType, output_dir: pathlib.Path,
                    images: dict[str, np.ndarray], epsilon: int | None, say: Callable[[str], None]) -> None:
    """Warn about missing or malformed outputs (they never make it invalid), then give the verdict."""
    warnings = (_check_defense_output(output_dir, images) if epsilon is None
                else _check_attack_output(output_dir, images, epsilon))
    for warning in warnings:
        say(f"WARNING: {warning}")
    if not warnings:
        say("OK: outputs complete and well-formed")
    say(f"VALID: {path} ({kind.value})" + (f", {len(warnings)} warning(s)" if warnings else ""))


def _check_attack_output(output_dir: pathlib.Path, images: dict[str, np.ndarray], epsilon: int) -> list[str]:
    warnings = []
    missing, unreadable, resized, outside = [], [], [], []
    for name, clean in images.items():
        path = output_dir / name
        if not path.is_file():
            missing.append(name)
            continue
        try:
            adv, notes = load_image(path)
        except ImageError as error:
            unreadable.append(f"{name} ({error.reason})")
            continue
        if any("resized" in note for note in notes):
            resized.append(name)
        elif np.abs(adv.astype(np.int16) - clean).max() > epsilon:
            outside.append(name)
    total = len(images)
    if missing:
        warnings.append(f"{len(missing)} of {total} adversarial images missing (e.g. {missing[0]})")
    if unreadable:
        warnings.append(f"{len(unreadable)} adversarial images unreadable (e.g. {unreadable[0]})")
    if resized:
        warnings.append(f"{len(resized)} adversarial images are not {IMAGE_SIZE}x{IMAGE_SIZE} (e.g. {resized[0]}); "
                        "they would be resized")
    if outside:
        warnings.append(f"{len(outside)} adversarial images go outside the eps={epsilon} box (e.g. {outside[0]}); "
                        "they would be clipped")
    return warnings


def _check_defense_output(output_dir: pathlib.Path, images: dict[str, np.ndarray]) -> list[str]:
    path = output_dir / DEFENSE_OUTPUT_FILE
    if not path.is_file():
        return [f"no {DEFENSE_OUTPUT_FILE} written"]
    predictions = read_predictions_csv(path)
    warnings = []
    unlabelled = [name for name in images if name[: -len(".png")] not in predictions]
    if unlabelled:
        warnings.append(f"{len(unlabelled)} of {len(images)} images have no prediction (e.g. {unlabelled[0]})")
    bad = sorted({v for v in predictions.values() if not 1 <= v <= NUM_LABELS})
    if bad:
        warnings.append(f"labels outside 1..{NUM_LABELS}: {bad[:5]}")
    return warnings
