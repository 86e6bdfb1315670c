"""MkDocs build hook: ```` ```python skip ```` fences render as ordinary Python.

`python skip` marks a documentation code block that tests/test_docs.py must not execute
(docs/README_FOR_WRITERS.md); Python-Markdown would not recognise the fence with the extra
word, so it is dropped before the page is rendered.
"""

import re

SKIP_FENCE = re.compile(r"^([ \t]*(?:`{3,}|~{3,})[ \t]*python)[ \t]+skip[ \t]*$", re.MULTILINE)


def on_page_markdown(markdown, **kwargs):
    return SKIP_FENCE.sub(r"\1", markdown)
