"""The package's shape (docs/ARCHITECTURE.md): commands only in hgd/cli, and nothing imports them."""

from __future__ import annotations

import ast
import pathlib

HGD = pathlib.Path(__file__).resolve().parents[1] / "hgd"
TOP_LEVEL = {"__init__.py", "backend.py", "demo.py"}


def _imports(path: pathlib.Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return found


def _runs_as_a_command(path: pathlib.Path) -> bool:
    return "__name__ == \"__main__\"" in path.read_text() or path.name == "__main__.py"


def test_the_library_never_imports_a_command_module():
    offenders = {str(path.relative_to(HGD.parent)): sorted(i for i in _imports(path) if i.startswith("hgd.cli"))
                 for path in HGD.rglob("*.py") if HGD / "cli" not in path.parents and path.name != "demo.py"}
    assert {path: found for path, found in offenders.items() if found} == {}


def test_commands_live_in_hgd_cli_and_the_top_holds_only_packages():
    commands = {str(path.relative_to(HGD)) for path in HGD.rglob("*.py") if _runs_as_a_command(path)}
    assert commands and all(c.startswith("cli/") or c == "demo.py" for c in commands), commands
    assert {path.name for path in HGD.glob("*.py")} == TOP_LEVEL


def test_no_two_modules_share_a_name_across_packages():
    """A newcomer finds a thing by its name: no ``x.py`` in two places (``__init__``, ``submission``,
    ``config`` and the command modules named after their library module excepted)."""
    shared_on_purpose = {"__init__", "submission", "config", "security", "fetch"}
    seen: dict[str, list[str]] = {}
    for path in HGD.rglob("*.py"):
        seen.setdefault(path.stem, []).append(str(path.relative_to(HGD)))
    assert {name: places for name, places in seen.items() if len(places) > 1 and name not in shared_on_purpose} == {}
