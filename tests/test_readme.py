"""The README renders as intended (CommonMark, markdown-it-py) and its test command is what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

markdown_it = pytest.importorskip("markdown_it", reason="markdown-it-py (in [dev])")

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _tokens(path: Path):
    return markdown_it.MarkdownIt("commonmark").parse(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_no_heading_is_swallowed_by_a_code_block(path):
    tokens = _tokens(path)
    for tok in tokens:
        if tok.type in ("fence", "code_block"):
            # a section heading ("## ...") in a code block means a fence was left open ("# x" is a shell comment)
            inside = [ln for ln in tok.content.splitlines() if re.match(r"#{2,6} \S", ln)]
            assert not inside, f"{path.name} line {tok.map[0] + 1}: a code block holds the heading {inside[0]!r}"
    # every "## " line of the source is a real heading
    text_headings = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.startswith("## ")]
    parsed = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open" and t.tag == "h2"]
    in_fences = sum(ln.startswith("## ") for t in tokens if t.type == "fence" for ln in t.content.splitlines())
    assert len(parsed) == len(text_headings) - in_fences


def test_the_readme_test_command_is_what_ci_runs():
    fences = [t.content.strip() for t in _tokens(ROOT / "README.md") if t.type == "fence" and t.info == "bash"]
    setup = [f for f in fences if f.startswith("python3 -m venv .venv")]
    assert len(setup) == 2, "exactly two set-up commands: the main job and the tests"
    main_job, tests = setup
    assert "gdino detect" in main_job and '".[dev]"' not in main_job  # the main job does not install the test extras
    assert "pytest" in tests and '".[dev]"' in tests
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert tests in ci, ".ci/run must run the README's test command verbatim"
