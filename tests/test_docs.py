"""The documentation a user reads: every relative link resolves, and nothing points outside the repository.

(a) Every relative Markdown link in ``README.md``, ``CHANGELOG.md`` and ``docs/**/*.md`` names a file
    of the repository (``http(s)``/``mailto`` links and pure ``#anchors`` are not checked; a
    ``#fragment`` is dropped before the check).
(b) No Markdown page under ``docs/``, no ``README.md`` and no ``hgd/**/*.py`` mentions a machine path
    (``/work/``), the reference material outside the repository (``../shared/docs``), or the wording of
    a lab notebook (``this session``, ``the issue``).

Pure text checks: no model, no data set, a second at most.
"""

from __future__ import annotations

import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent

LINKED_PAGES = sorted([REPO / "README.md", REPO / "CHANGELOG.md", *(REPO / "docs").rglob("*.md")])
CHECKED_TEXTS = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md"), *(REPO / "hgd").rglob("*.py")])

FORBIDDEN = (
    ("../shared/docs", re.compile(re.escape("../shared/docs"))),
    ("/work/", re.compile(re.escape("/work/"))),
    ("this session", re.compile(r"this\s+session", re.IGNORECASE)),
    ("the issue", re.compile(r"the\s+issue", re.IGNORECASE)),
)

# [text](target) and [text](target "title"); images ![alt](target) too. Reference-style definitions
# ([label]: target) as well. Code spans and fenced blocks are removed first: they hold commands, not links.
INLINE_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def _rel(path: pathlib.Path) -> str:
    return path.relative_to(REPO).as_posix()


def links(text: str) -> list[str]:
    """The link targets of a Markdown text, outside code."""
    text = CODE_SPAN.sub("", FENCE.sub("", text))
    return INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text)


def test_the_pages_exist():
    """The checks below would pass vacuously on a checkout without its documentation."""
    assert (REPO / "README.md").is_file() and (REPO / "CHANGELOG.md").is_file()
    assert len([p for p in LINKED_PAGES if p.is_relative_to(REPO / "docs")]) >= 10


def test_link_extraction():
    text = ("[a](guide/a.md) [b](b.md#part) ![c](c.png \"title\") [d](https://x.org) [e](#here)\n"
            "`[f](not-a-link.md)`\n```\n[g](in-a-fence.md)\n```\n[h]: ref.md\n")
    assert links(text) == ["guide/a.md", "b.md#part", "c.png", "https://x.org", "#here", "ref.md"]


@pytest.mark.parametrize("page", LINKED_PAGES, ids=_rel)
def test_relative_links_resolve(page: pathlib.Path):
    broken = []
    for target in links(page.read_text(encoding="utf-8")):
        if EXTERNAL.match(target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        resolved = (page.parent / path).resolve()
        if not resolved.is_file() or not resolved.is_relative_to(REPO):
            broken.append(target)
    assert not broken, f"{_rel(page)}: links to nothing in the repository: {broken}"


@pytest.mark.parametrize("path", CHECKED_TEXTS, ids=_rel)
def test_no_machine_paths_or_notebook_wording(path: pathlib.Path):
    text = path.read_text(encoding="utf-8")
    found = [f"{name!r} (line {text.count(chr(10), 0, match.start()) + 1})"
             for name, pattern in FORBIDDEN for match in pattern.finditer(text)]
    assert not found, f"{_rel(path)} mentions {', '.join(found)}"
