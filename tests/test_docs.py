"""The documentation works: its Python examples run, and the site builds strictly.

Every fenced block opened with ```python in README.md and docs/**/*.md is
executed; the blocks of one page run in order in one namespace of a fresh Python
process, as a reader would paste them (nothing another test left in the test
process -- a TensorFlow strategy, a cluster's threads -- can change or crash
them), in a temporary working directory (files the examples write land there),
with the Agg matplotlib backend and the test run's warning filters. A traceback
points at the page and its line. Blocks
fenced as ```py, ```pycon, ```text or ```bash are shown, never run: use them
for snippets that cannot run in a test (output, shell commands, multi-device
set-ups).
"""

from __future__ import annotations

import importlib.util
import json
import os
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


def run_page(page: Path) -> None:
    """Run a page's ```python blocks in order in one namespace (this process)."""
    namespace = {"__name__": f"docs_example_{page.stem.replace('-', '_')}"}
    for start, source in python_blocks(page.read_text(encoding="utf-8")):
        # Pad with blank lines so a traceback's line numbers are the page's.
        code = compile("\n" * (start - 1) + source, str(page), "exec")
        exec(code, namespace)


def apply_warning_filters(filters: list[str]) -> None:
    """Install pytest-style `action:message:category:module:lineno` filters, in order."""
    import warnings

    for spec in filters:
        action, message, category, module, lineno = (spec.split(":", 4) + [""] * 4)[:5]
        warning_class = Warning
        if category:
            module_name, _, class_name = category.rpartition(".")
            warning_class = getattr(importlib.import_module(module_name or "builtins"), class_name)
        # pytest's filters are regular expressions, as `warnings.filterwarnings` takes them.
        warnings.filterwarnings(action, message, warning_class, module, int(lineno or 0))


def _python_path() -> str:
    # The checkout first: the pages document this tree, installed or not.
    return os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=_page_id)
def test_page_examples_run(page, tmp_path, request):
    filters = list(request.config.getini("filterwarnings"))
    result = subprocess.run(
        # faulthandler: a crash of the page's process prints where it happened.
        [sys.executable, "-X", "faulthandler", __file__, str(page), json.dumps(filters)],
        cwd=tmp_path,
        env={**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": _python_path()},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, (
        f"{_page_id(page)}'s examples failed (exit {result.returncode}):\n"
        f"{result.stdout[-4000:]}{result.stderr[-8000:]}"
    )


def test_page_runner_reports_the_page_line_and_applies_warning_filters(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# T\n\n```python\nimport warnings\nwarnings.warn('x')\n```\n")
    script = [sys.executable, __file__, str(page)]
    warned = subprocess.run(
        [*script, json.dumps(["error"])], capture_output=True, text=True, timeout=120, check=False
    )
    assert warned.returncode != 0
    assert f'File "{page}", line 5' in warned.stderr and "UserWarning: x" in warned.stderr
    ignored = subprocess.run(
        [*script, json.dumps(["error", "ignore::UserWarning"])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ignored.returncode == 0, ignored.stderr


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


if __name__ == "__main__":  # one page, in a fresh process: test_page_examples_run
    apply_warning_filters(json.loads(sys.argv[2]))
    run_page(Path(sys.argv[1]))
