"""The documentation's code: every ```python block of docs/**/*.md and README.md runs.

A page's blocks run in order in one namespace, in a fresh temporary working directory (with
PLURALIGN_CACHE inside it), so a page is a script a reader can follow. ```python skip blocks
are shown but not run; a page with `<!-- docs-test: slow -->` runs in the slow tier
(docs/README_FOR_WRITERS.md).
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^([ \t]*)(`{3,}|~{3,})[ \t]*([^\n`]*)\n(.*?)^\1\2[ \t]*$", re.MULTILINE | re.DOTALL)
SLOW_MARK = "<!-- docs-test: slow -->"


def python_blocks(text: str) -> list[str]:
    """The executable blocks of a Markdown page: fences whose info string is exactly `python`."""
    blocks = []
    for m in FENCE.finditer(text):
        indent, info, body = m.group(1), m.group(3).strip(), m.group(4)
        if info == "python":
            blocks.append("\n".join(line[len(indent):] if line.startswith(indent) else line
                                    for line in body.splitlines()))
    return blocks


def pages() -> list[pathlib.Path]:
    found = sorted(p for p in (ROOT / "docs").rglob("*.md") if p.name != "README_FOR_WRITERS.md")
    return [ROOT / "README.md", *found]


def page_params():
    params = []
    for page in pages():
        text = page.read_text()
        if not python_blocks(text):
            continue
        marks = [pytest.mark.slow] if SLOW_MARK in text else []
        params.append(pytest.param(page, marks=marks, id=str(page.relative_to(ROOT))))
    return params


def test_fence_parser_takes_python_and_leaves_skip_and_bash():
    text = "```python\na = 1\n```\n\n```python skip\nb = 2\n```\n\n```bash\nc\n```\n\n- x\n\n    ```python\n    d = 4\n    ```\n"
    assert python_blocks(text) == ["a = 1", "d = 4"]


def test_the_docs_have_runnable_examples():
    assert len(page_params()) >= 2  # a broken parser that finds nothing would pass every page


@pytest.mark.parametrize("page", page_params())
def test_page_code_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PLURALIGN_CACHE", str(tmp_path / "cache"))
    namespace = {"__name__": "__docs__"}
    for i, block in enumerate(python_blocks(page.read_text())):
        code = compile(block, f"{page.relative_to(ROOT)} [python block {i + 1}]", "exec")
        exec(code, namespace)  # noqa: S102 - the documentation's own examples
