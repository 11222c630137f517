"""Docs that quote example code cannot drift from it.

A Markdown file under docs/ containing ``<!-- verbatim-from: DIR -->`` promises
that every fenced code block after that line (up to ``<!-- /verbatim -->`` or
the end of the file) appears verbatim in one of the files under DIR, so a
walkthrough is always the code that the example's own test runs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- verbatim-from: (\S+) -->")
END = "<!-- /verbatim -->"
FENCE = re.compile(r"^(`{3,}|~{3,})")
TEXT_SUFFIXES = {".py", ".pyi", ".proto", ".toml", ".sh", ".md", ".txt", ".cfg", ".ini"}


def code_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, content) of each fenced block; content without the fences."""
    blocks: list[tuple[int, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, start = opening.group(1), i + 1
        i += 1
        while i < len(lines) and not lines[i].startswith(fence):
            i += 1
        blocks.append((start, "\n".join(lines[start:i])))
        i += 1
    return blocks


def quoting_docs() -> list[tuple[Path, str, str, int]]:
    """(doc, quoted directory, the quoting part, its first line number) per marker in docs/."""
    found = []
    for doc in sorted((ROOT / "docs").glob("*.md")):
        text = doc.read_text(encoding="utf-8")
        for match in MARKER.finditer(text):
            part = text[match.end() :].split(END, 1)[0]
            found.append((doc, match.group(1), part, text.count("\n", 0, match.end()) + 1))
    return found


def test_the_walkthrough_is_checked():
    sources = {source for _, source, _, _ in quoting_docs()}
    assert "examples/CustomEvents" in sources, (
        "no doc under docs/ has <!-- verbatim-from: examples/CustomEvents --> any more: "
        "keep the marker above the custom event walkthrough wherever it moves"
    )


@pytest.mark.parametrize(
    ("doc", "source", "part", "offset"),
    quoting_docs(),
    ids=[f"{doc.name}:{source}" for doc, source, _, _ in quoting_docs()],
)
def test_every_code_block_is_quoted_verbatim(doc, source, part, offset):
    directory = ROOT / source
    assert directory.is_dir(), f"{doc.name}: {source} does not exist"
    files = {
        path: path.read_text(encoding="utf-8")
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.suffix in TEXT_SUFFIXES and "__pycache__" not in path.parts
    }
    blocks = code_blocks(part)
    assert blocks, f"{doc.name}: no code blocks after the verbatim-from marker"
    missing = [
        f"{doc.name}, block at line {offset + line}:\n{block}"
        for line, block in blocks
        if block.strip() and not any(block in text for text in files.values())
    ]
    assert not missing, (
        f"{doc.name} quotes code that is not (or no longer) in any file under {source}; "
        "copy the block from the file again:\n\n" + "\n\n".join(missing)
    )


def test_code_blocks_parser():
    text = "a\n```python\nx = 1\n\ny = 2\n```\nb\n~~~sh\nls\n~~~\n"
    assert code_blocks(text) == [(2, "x = 1\n\ny = 2"), (8, "ls")]
