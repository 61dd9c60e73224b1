"""docs/tutorial.md: its Python blocks run, in order, in one namespace, so the tutorial cannot rot."""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUTORIAL = os.path.join(ROOT, "docs", "tutorial.md")


def python_blocks(text):
    """The bodies of the ```python fences of a Markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def test_python_blocks_are_found():
    text = "intro\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = a + 1\n```\n"
    assert python_blocks(text) == ["a = 1\n", "b = a + 1\n"]


def test_tutorial_runs_end_to_end(capsys):
    with open(TUTORIAL) as f:
        blocks = python_blocks(f.read())
    assert len(blocks) == 6
    namespace = {"__name__": "tutorial"}
    for i, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"{TUTORIAL} (block {i})", "exec"), namespace)
        except Exception as e:  # Name the block that failed.
            pytest.fail(f"docs/tutorial.md block {i} failed: {type(e).__name__}: {e}")
    out = capsys.readouterr().out
    assert "parameters" in out and "held-out Chamfer" in out
    assert sorted(namespace["loaded"].signatures) == ["decode", "encode", "serving_default"]
