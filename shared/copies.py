"""Marked copies between model folders, checked so they never drift (run by `nox -s shared`).

A model folder never imports another one; code it shares with one is copied, with a mark on the line above:

    # Copied from DCGAN/sample.py: save_images
    def save_images(...):                          # must stay identical to DCGAN/sample.py's save_images

    # Copied from DCGAN/train.py: CollapseWatch with D(G(z))->D(G(z), z); README->BiGAN README
    class CollapseWatch:                           # identical after the replacements (old->new; old2->new2)

    # Adapted from DCGAN/model.py (Generator): adds the class embedding
    class Generator(nn.Module):                    # a note only: adapted code is not checked

`python -m shared.copies` prints every marked copy that differs from its source (or whose source is gone) and
exits 1 if there is one; `check(root)` returns the same list.
"""
from __future__ import annotations

import ast
import re
import sys
import textwrap
import tokenize
from dataclasses import dataclass
from pathlib import Path

MARK = re.compile(r"^\s*# Copied from (?P<path>[\w\-./]+\.py): (?P<name>[\w.]+)(?: with (?P<repl>.+?))?\s*$")
SKIP_DIRS = {".git", ".nox", ".venv", "runs", "__pycache__", "build"}


@dataclass
class Copy:
    file: Path  # the file holding the copy
    line: int  # 1-based line of the mark
    source: str  # "DCGAN/sample.py"
    name: str  # "save_images" or "Class.method"
    replacements: list[tuple[str, str]]


def definitions(tree: ast.AST) -> dict[str, ast.AST]:
    """'name' and 'Class.method' -> the def/class node, for a module's top level and its classes' bodies."""
    found: dict[str, ast.AST] = {}
    for node in getattr(tree, "body", []):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found[node.name] = node
            if isinstance(node, ast.ClassDef):
                for child in node.body:
                    if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                        found[f"{node.name}.{child.name}"] = child
    return found


def node_text(lines: list[str], node: ast.AST) -> str:
    """The source of a def/class, decorators included, dedented."""
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return textwrap.dedent("\n".join(lines[start - 1:node.end_lineno])).rstrip() + "\n"


def parse_replacements(text: str | None) -> list[tuple[str, str]]:
    pairs = []
    for part in (text or "").split(";"):
        if "->" in part:
            old, new = part.split("->", 1)
            pairs.append((old.strip(), new.strip()))
    return pairs


def marked_copies(root: Path) -> list[Copy]:
    """Every `# Copied from` mark in the .py files under root (outside hidden, run and environment folders)."""
    copies = []
    for path in sorted(root.rglob("*.py")):
        if SKIP_DIRS & set(path.relative_to(root).parts):
            continue
        with tokenize.open(path) as f:
            comments = [(t.start[0], t.string) for t in tokenize.generate_tokens(f.readline)
                        if t.type == tokenize.COMMENT]  # real comments, not marks quoted in docstrings
        for i, text in comments:
            m = MARK.match(text)
            if m:
                copies.append(Copy(path, i, m["path"], m["name"], parse_replacements(m["repl"])))
    return copies


def block_after(path: Path, mark_line: int) -> str | None:
    """The def/class that starts on the first line after the mark (decorators count), or None."""
    text = path.read_text()
    lines = text.splitlines()
    nodes = [n for n in ast.walk(ast.parse(text)) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                    ast.ClassDef))]
    for node in nodes:
        start = min([node.lineno] + [d.lineno for d in node.decorator_list])
        if start == mark_line + 1:
            return node_text(lines, node)
    return None


def check(root: Path) -> list[str]:
    """One line per marked copy that is not identical to its source (after its replacements)."""
    problems = []
    for c in marked_copies(root):
        where = f"{c.file.relative_to(root)}:{c.line}"
        copy = block_after(c.file, c.line)
        if copy is None:
            problems.append(f"{where}: the mark is not directly above a def or class")
            continue
        source_file = root / c.source
        if not source_file.is_file():
            problems.append(f"{where}: source {c.source} does not exist")
            continue
        source_text = source_file.read_text()
        node = definitions(ast.parse(source_text)).get(c.name)
        if node is None:
            problems.append(f"{where}: {c.source} has no {c.name}")
            continue
        expected = node_text(source_text.splitlines(), node)
        for old, new in c.replacements:
            expected = expected.replace(old, new)
        if expected != copy:
            first = next(i for i, (a, b) in enumerate(zip(expected.splitlines() + [""], copy.splitlines() + [""]))
                         if a != b)
            problems.append(f"{where}: differs from {c.source}: {c.name} (first difference in line {first + 1} "
                            f"of the block); update the copy, or mark it '# Adapted from ...: what changed'")
    return problems


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    problems = check(root)
    for p in problems:
        print(p)
    n = len(marked_copies(root))
    print(f"{n} marked copies checked, {len(problems)} differ from their source")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
