"""docs/layout.md: each module imports (at the top of the file) only modules of rows above its own."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "alexnet"


def _rows(text: str) -> list[list[str]]:
    """The Layout block's rows as lists of module paths ('data/loader.py', 'models/' for a folder)."""
    block = text.split("# Layout", 1)[1].split("```", 2)[1]
    rows: list[list[str]] = []
    for line in block.splitlines()[2:]:
        if not line.startswith("  ") or line.startswith("   "):
            continue  # a continuation line
        names, folder = [], ""
        for word in line.split("  ")[1].split():
            if "/" in word and not word.endswith("/"):
                folder = word.rsplit("/", 1)[0] + "/"
                names.append(word)
            elif word.endswith("/"):
                names.append(word)
            else:
                names.append(folder + word)
        rows.append(names)
    return rows


def _row_of(module: Path, rows: list[list[str]]) -> int:
    rel = module.relative_to(SRC).as_posix()
    exact = [i for i, row in enumerate(rows) if rel in row]
    if exact:
        return exact[0]
    folder = [i for i, row in enumerate(rows) if any(n.endswith("/") and rel.startswith(n) for n in row)]
    assert folder, f"{rel} is in no row of docs/layout.md"
    return folder[0]


def _target(module: str) -> Path:
    path = SRC / Path(*module.split(".")[1:])
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _upward_violations(rows: list[list[str]]) -> list[str]:
    wrong = []
    for module in sorted(SRC.rglob("*.py")):
        if module.name in ("__init__.py", "__main__.py") and module.parent.name != "cli":
            continue
        mine = _row_of(module, rows)
        for node in ast.parse(module.read_text()).body:  # top-level imports only
            if isinstance(node, ast.ImportFrom) and node.module and re.match(r"alexnet\.", node.module):
                target = _target(node.module)
                if target.name == "__init__.py" or not target.exists():
                    continue
                theirs = _row_of(target, rows)
                if theirs > mine:
                    wrong.append(f"{module.relative_to(SRC)} (row {mine}) imports {node.module} (row {theirs})")
    return wrong


def test_every_module_is_in_the_layout_and_imports_only_upward():
    rows = _rows((ROOT / "docs" / "layout.md").read_text())
    assert not _upward_violations(rows), "\n".join(_upward_violations(rows))
    # the check can fail: the config's row moved to the bottom is imported from above
    config_row = next(row for row in rows if "config.py" in row)
    moved = [row for row in rows if row is not config_row] + [config_row]
    assert any("imports alexnet.config " in line for line in _upward_violations(moved))
