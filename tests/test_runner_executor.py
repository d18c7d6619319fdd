"""The local executor and submission folders: real scripts, real processes, no mocks."""

from __future__ import annotations

import json
import pathlib
import sys
import time

import pytest

from hgd.runner.executors import RunRequest
from hgd.runner.local_executor import LocalExecutor
from hgd.runner.submissions import (AttackSubmission, DefenseSubmission, SubmissionError, SubmissionType, discover, load_submission,
                                    unique_names)

SUBMISSIONS = pathlib.Path(__file__).resolve().parent / "submissions"


def make_submission(folder: pathlib.Path, script: str, kind: str = "attack", executable: bool = True) -> pathlib.Path:
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text(json.dumps(
        {"type": kind, "container": "c", "container_gpu": "g", "entry_point": "run.sh"}))
    (folder / "run.sh").write_text("#!/bin/sh\n" + script)
    (folder / "run.sh").chmod(0o755 if executable else 0o644)
    return folder


def alive(pid: int) -> bool:
    """Whether a process runs (a killed child may linger as a zombie until its new parent reaps it)."""
    for _ in range(50):
        try:
            state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        if state in ("Z", "X"):
            return False
        time.sleep(0.02)
    return True


def request(code: pathlib.Path, tmp: pathlib.Path, *, output_file=None, extra=(), limit=30.0) -> RunRequest:
    (tmp / "in").mkdir(exist_ok=True)
    return RunRequest(code_dir=code, entry_point="run.sh", input_dir=tmp / "in", output_dir=tmp / "out",
                      output_file=output_file, extra_args=tuple(extra), time_limit=limit)


def test_command_line_cwd_and_environment(tmp_path):
    code = make_submission(tmp_path / "sub", 'printf "%s\\n" "$0" "$@" "$(pwd)" "$PYTHON" > "$(dirname "$2")/seen.txt"\n'
                                             'echo hello from the submission\n')
    result = LocalExecutor().run(request(code, tmp_path, output_file="result.csv"))
    assert result.ok and result.exit_code == 0 and not result.timed_out
    assert "hello from the submission" in result.log
    entry, input_dir, output, cwd, python = (tmp_path / "out" / "seen.txt").read_text().splitlines()
    assert input_dir == str(tmp_path / "in") and output == str(tmp_path / "out" / "result.csv")
    assert python == sys.executable
    assert pathlib.Path(cwd) != code and pathlib.Path(entry).parent == pathlib.Path(cwd)
    assert not pathlib.Path(cwd).exists()  # the fresh copy is removed after the run


def test_attack_gets_output_dir_and_epsilon(tmp_path):
    code = make_submission(tmp_path / "sub", 'echo "$2 $3" > "$2/args.txt"\n')
    attack = load_submission(code)
    assert isinstance(attack, AttackSubmission) and not attack.targeted
    (tmp_path / "in").mkdir()
    result = attack.run(LocalExecutor(), tmp_path / "in", tmp_path / "out", 12, time_limit=30)
    assert result.ok
    assert (tmp_path / "out" / "args.txt").read_text().split() == [str(tmp_path / "out"), "12"]


def test_failures_are_reported_not_raised(tmp_path):
    crash = make_submission(tmp_path / "crash", "echo doomed >&2\nexit 7\n")
    result = LocalExecutor().run(request(crash, tmp_path))
    assert result.exit_code == 7 and not result.ok and "doomed" in result.log
    not_exec = make_submission(tmp_path / "plain", "exit 0\n", executable=False)
    result = LocalExecutor().run(request(not_exec, tmp_path))
    assert result.exit_code == 126 and not result.ok
    bad_shebang = tmp_path / "shebang"
    make_submission(bad_shebang, "")
    (bad_shebang / "run.sh").write_text("#!/nonexistent/interpreter\n")
    assert LocalExecutor().run(request(bad_shebang, tmp_path)).exit_code == 127


def test_time_limit_kills_the_whole_process_group(tmp_path):
    """A submission that ignores SIGTERM and leaves a background child: SIGKILL after the grace."""
    code = make_submission(tmp_path / "stubborn", 'trap "" TERM\nsleep 300 &\necho $! > "$2/child.pid"\n'
                                                  'echo partial > "$2/partial.txt"\nwhile true; do sleep 1; done\n')
    start = time.monotonic()
    result = LocalExecutor(grace=0.5).run(request(code, tmp_path, limit=1.0))
    assert result.timed_out and not result.ok
    assert 1.0 <= result.seconds < 5 and time.monotonic() - start < 10
    assert (tmp_path / "out" / "partial.txt").read_text() == "partial\n"  # what it wrote stays
    assert not alive(int((tmp_path / "out" / "child.pid").read_text()))
    assert "time limit" in result.log


def test_background_children_do_not_outlive_a_clean_exit(tmp_path):
    code = make_submission(tmp_path / "bg", 'sleep 300 &\necho $! > "$2/child.pid"\nexit 0\n')
    assert LocalExecutor().run(request(code, tmp_path)).ok
    assert not alive(int((tmp_path / "out" / "child.pid").read_text()))


def test_load_submission_rejects_bad_folders(tmp_path):
    good = make_submission(tmp_path / "good", "exit 0\n", kind="defense")
    defense = load_submission(good)
    assert isinstance(defense, DefenseSubmission) and defense.image(False) == "c" and defense.image(True) == "g"
    cases = {
        "no metadata.json": None,
        "malformed metadata.json": "{",
        "not a JSON object": "[1]",
        "type 'bogus'": {"type": "bogus", "entry_point": "run.sh"},
        "entry_point None": {"type": "attack"},
        "must be a path inside": {"type": "attack", "entry_point": "../run.sh"},
        "does not exist": {"type": "attack", "entry_point": "missing.sh"},
        "defense_aware 'yes' is not true or false": {"type": "attack", "entry_point": "run.sh",
                                                     "defense_aware": "yes"},
        "defense_aware is for attacks": {"type": "defense", "entry_point": "run.sh", "defense_aware": True},
        "unknown key\\(s\\) \\['defence_aware'\\]": {"type": "attack", "entry_point": "run.sh", "defence_aware": True},
        "reads 'x' is not a list": {"type": "attack", "entry_point": "run.sh", "reads": "x"},
        "reads \\['../nowhere'\\]": {"type": "attack", "entry_point": "run.sh", "reads": ["../nowhere"]},
    }
    for expected, meta in cases.items():
        folder = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        if meta is not None:
            (folder / "metadata.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
        with pytest.raises(SubmissionError, match=expected):
            load_submission(folder)


def test_a_change_in_a_folder_it_reads_changes_the_fingerprint(tmp_path):
    """An attack on a shipped defense reads that defense's folder: retrained weights there must run its
    pieces again, as a change of its own files does."""
    folder = make_submission(tmp_path / "attacks" / "aware", "exit 0\n")
    (tmp_path / "defense").mkdir()
    (tmp_path / "defense" / "weights.h5").write_bytes(b"old")
    meta = json.loads((folder / "metadata.json").read_text())
    plain = load_submission(folder).fingerprint()
    (folder / "metadata.json").write_text(json.dumps({**meta, "reads": ["../../defense"]}))
    submission = load_submission(folder)
    assert submission.reads == ((tmp_path / "defense").resolve(),)
    before = submission.fingerprint()
    assert before == submission.fingerprint()
    (tmp_path / "defense" / "weights.h5").write_bytes(b"retrained")
    assert submission.fingerprint() not in (before, plain)


def test_discover_types_names_and_problems(tmp_path):
    one = make_submission(tmp_path / "a" / "same", "exit 0\n")
    two = make_submission(tmp_path / "b" / "same", "exit 0\n", kind="targeted_attack")
    misplaced = make_submission(tmp_path / "c" / "defense_here", "exit 0\n", kind="attack")
    broken = tmp_path / "d" / "broken"
    broken.mkdir(parents=True)
    found = discover([(one, None), (two, None), (one, None), (misplaced, SubmissionType.DEFENSE),
                      (broken, None)])
    assert [a.name for a in found.attacks] == ["defense_here", "same"]
    assert [a.name for a in found.targeted_attacks] == ["same-2"] and found.targeted_attacks[0].targeted
    assert found.defenses == []
    reasons = "\n".join(reason for _, reason in found.problems)
    assert "used as attack" in reasons and "no metadata.json" in reasons and "named 'same-2'" in reasons
    assert unique_names(["x", "x", "x-2", "y"]) == ["x", "x-3", "x-2", "y"]


def test_shipped_test_submissions_are_valid_folders():
    for folder in sorted(SUBMISSIONS.iterdir()):
        submission = load_submission(folder)
        assert submission.fingerprint() == submission.fingerprint()
