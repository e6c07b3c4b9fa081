"""The documentation works: its Python examples run, and the site builds strictly.

Every fenced block opened with ```python in README.md and docs/**/*.md is
executed; the blocks of one page run in order in one fresh namespace, in a
temporary working directory (files the examples write land there) with the
Agg matplotlib backend. A traceback points at the page and its line. Blocks
fenced as ```py, ```pycon, ```text or ```bash are shown, never run: use them
for snippets that cannot run in a test (output, shell commands, multi-device
set-ups).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)$")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """`(first line number, source)` of every ```python block of a Markdown text."""
    blocks: list[tuple[int, str]] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        fence, indent = opening["fence"], opening["indent"]
        language = (opening["info"].split() or [""])[0].lstrip(".{").rstrip("}").lower()
        body: list[str] = []
        index += 1
        while index < len(lines):
            line = lines[index]
            stripped = line.strip()
            if stripped.startswith(fence[0] * len(fence)) and not stripped.strip(fence[0]):
                break
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            index += 1
        start = index - len(body) + 1  # 1-based line number of the block's first line
        if language == "python":
            blocks.append((start, "\n".join(body)))
        index += 1
    return blocks


def _page_id(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


PAGES_WITH_CODE = [page for page in PAGES if python_blocks(page.read_text(encoding="utf-8"))]


def test_block_extraction():
    text = "\n".join(
        [
            "# Title",
            "```python",
            "a = 1",
            "```",
            "```py",
            "not_run()",
            "```",
            "1. A list item:",
            "",
            "    ```python",
            "    b = a + 1",
            "    ```",
            "````python",
            "c = '```'",
            "````",
        ]
    )
    assert python_blocks(text) == [(3, "a = 1"), (11, "b = a + 1"), (14, "c = '```'")]


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=_page_id)
def test_page_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"docs_example_{page.stem.replace('-', '_')}"}
    for start, source in python_blocks(page.read_text(encoding="utf-8")):
        # Pad with blank lines so a traceback's line numbers are the page's.
        code = compile("\n" * (start - 1) + source, str(page), "exec")
        exec(code, namespace)


def test_mkdocs_builds_strictly(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip('mkdocs is not installed: pip install -e ".[docs]" to build the site')
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}{result.stderr}"
    assert (tmp_path / "site" / "index.html").exists()
