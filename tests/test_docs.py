"""The docs run: every ```python block of docs/*.md and README.md is executed, and the site builds with --strict.

Each page's blocks run in order in one fresh namespace (a later block may use an earlier block's names), in a
temporary working directory (so ``sqlite:///budgets.db`` and ``my-curves.jsonl`` are written there). A block is
skipped only when the line just before its fence (blank lines aside) is one of these HTML comments:

* ``<!-- needs: OPENAI_API_KEY -->`` (one or more variable names, comma- or space-separated): the block calls a
  provider; it runs only when every named variable is set.
* ``<!-- not-run: why -->``: an illustrative fragment (keep these rare; prefer a runnable block on the shipped
  fakes ``MeteredFakeChatModel`` / ``MeteredMockLLM``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted([*DOCS.glob("*.md"), ROOT / "README.md"])

FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\n]*)$")
MARKER = re.compile(r"^\s*<!--\s*(?P<kind>needs|not-run)\s*:\s*(?P<arg>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    code: str
    needs: tuple[str, ...] = ()
    not_run: str | None = None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def python_blocks(page: Path) -> list[Block]:
    """The ```python blocks of a Markdown page, with the marker on the line before each fence."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info = m["fence"], m["info"].strip()
        end = i + 1
        while end < len(lines) and not re.match(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[end]):
            end += 1
        if end == len(lines):
            raise AssertionError(f"{page.relative_to(ROOT)}:{i + 1}: code fence never closed")
        language = info.split()[0].lower() if info else ""
        if language in ("python", "py", "python3"):
            needs: tuple[str, ...] = ()
            not_run = None
            j = i - 1
            while j >= 0 and not lines[j].strip():
                j -= 1
            marker = MARKER.match(lines[j]) if j >= 0 else None
            if marker and marker["kind"] == "needs":
                needs = tuple(name for name in re.split(r"[,\s]+", marker["arg"]) if name)
            elif marker:
                not_run = marker["arg"] or "fragment"
            indent = len(m["indent"])
            code = "\n".join(line[indent:] if line[:indent].isspace() else line for line in lines[i + 1 : end])
            blocks.append(Block(page, i + 1, code + "\n", needs, not_run))
        i = end + 1
    return blocks


def test_markers_and_fences_are_parsed(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```python\nx = 1\n```\n\n<!-- needs: OPENAI_API_KEY, OTHER -->\n\n```python\ncall()\n```\n"
        "<!-- not-run: fragment -->\n```py\n...\n```\n```bash\nls\n```\n````python\ny = '```'\n````\n",
        encoding="utf-8",
    )
    blocks = python_blocks(page)
    assert [b.code for b in blocks] == ["x = 1\n", "call()\n", "...\n", "y = '```'\n"]
    assert blocks[1].needs == ("OPENAI_API_KEY", "OTHER")
    assert blocks[2].not_run == "fragment"
    assert not blocks[0].needs and blocks[0].not_run is None and blocks[3].not_run is None


PAGE_BLOCKS = {page: python_blocks(page) for page in PAGES if page.exists()}


def test_every_page_parses_and_some_blocks_run() -> None:
    runnable = [b for blocks in PAGE_BLOCKS.values() for b in blocks if not b.needs and b.not_run is None]
    assert len(runnable) >= 10, [b.where for b in runnable]


@pytest.mark.parametrize("page", [p for p, blocks in PAGE_BLOCKS.items() if blocks], ids=lambda p: p.name)
def test_page_code_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(page)])
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    ran = 0
    for block in PAGE_BLOCKS[page]:
        if block.not_run is not None:
            continue
        if block.needs and not all(os.environ.get(name) for name in block.needs):
            continue
        try:
            exec(compile(block.code, block.where, "exec"), namespace)
        except BaseException as exc:
            raise AssertionError(f"the code block at {block.where} failed: {exc!r}") from exc
        ran += 1
    skipped = [b.where for b in PAGE_BLOCKS[page] if b.not_run is not None or b.needs]
    assert ran or skipped


def test_site_builds_strict(tmp_path: Path) -> None:
    if any(importlib.util.find_spec(name) is None for name in ("mkdocs", "material", "mkdocstrings")):
        message = "mkdocs / mkdocstrings are not installed: pip install -e '.[docs]'"
        if os.environ.get("CI"):
            pytest.fail(message + " (required under CI)")
        pytest.skip(message)
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    assert (tmp_path / "site" / "index.html").exists()
    assert (tmp_path / "site" / "reference" / "allocate" / "index.html").exists()
    assert time.perf_counter() - started < 240
    # offline: the theme must not pull fonts from Google (theme.font: false in mkdocs.yml)
    pages = "".join(page.read_text(encoding="utf-8") for page in (tmp_path / "site").rglob("*.html"))
    assert "fonts.googleapis.com" not in pages
    assert "fonts.gstatic.com" not in pages

