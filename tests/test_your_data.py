"""docs/your_data.md: its Python blocks run, in order, in one namespace, and print what the page shows.

Each ```text block of the page is the output of the Python block before it, pasted from
a run; the test runs every block and compares: the same text, and every number within
`RTOL` of the page's (training on another CPU rounds differently), so the page's numbers
are the code's own.
"""

import contextlib
import io
import os
import re

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(ROOT, "docs", "your_data.md")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
# Relative tolerance of a printed number, plus an absolute one for numbers near 0.
RTOL, ATOL = 0.25, 0.02


def code_and_outputs(text):
    """`[(code, output or None)]`: each ```python fence with the ```text fence that follows it, if any."""
    fences = re.findall(r"^```(\w*)\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)
    pairs = []
    for language, body in fences:
        if language == "python":
            pairs.append([body, None])
        elif language == "text" and pairs and pairs[-1][1] is None:
            pairs[-1][1] = body
    return [tuple(pair) for pair in pairs]


def output_problems(expected, got):
    """Why `got` is not the page's `expected` output (empty if it is, numbers within tolerance)."""
    skeleton = [re.sub(r"\s+", "", NUMBER.sub("#", text)) for text in (expected, got)]
    if skeleton[0] != skeleton[1]:
        return [f"the text differs:\n--- page\n{expected}--- run\n{got}"]
    problems = []
    for a, b in zip(NUMBER.findall(expected), NUMBER.findall(got)):
        if abs(float(a) - float(b)) > RTOL * max(abs(float(a)), abs(float(b))) + ATOL:
            problems.append(f"{a} on the page, {b} in the run")
    return problems


def test_outputs_are_compared_by_text_and_numbers():
    page = "```python\nprint(1)\n```\nIt prints:\n```text\nloss 0.50 [1 2]\n```\n```python\nx = 2\n```\n"
    assert code_and_outputs(page) == [("print(1)\n", "loss 0.50 [1 2]\n"), ("x = 2\n", None)]
    assert output_problems("loss 0.50 [1 2]\n", "loss  0.55 [ 1  2]\n") == []
    assert output_problems("loss 0.50\n", "loss 0.90\n") == ["0.50 on the page, 0.90 in the run"]
    assert output_problems("loss 0.50\n", "gain 0.50\n")


def test_your_data_page_runs_and_prints_what_it_shows():
    with open(PAGE) as f:
        blocks = code_and_outputs(f.read())
    assert len(blocks) == 11 and sum(output is not None for _, output in blocks) == 10
    namespace = {"__name__": "your_data"}
    problems = []
    for i, (code, expected) in enumerate(blocks, 1):
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                exec(compile(code, f"{PAGE} (block {i})", "exec"), namespace)
        except Exception as e:  # Name the block that failed.
            pytest.fail(f"docs/your_data.md block {i} failed: {type(e).__name__}: {e}")
        if expected is not None:
            problems += [f"block {i}: {problem}" for problem in output_problems(expected, printed.getvalue())]
    assert not problems, "\n".join(problems)
    # The served model returns what the model does, in pixels.
    model, served = namespace["model"], namespace["served"]
    expected = model(namespace["test_params"][:3], iters=5)
    np.testing.assert_allclose(served["set"], expected["sets"][-1], atol=0.05)
    np.testing.assert_allclose(served["mask"], expected["masks"][-1], atol=1e-3)
    assert sorted(namespace["loaded"].signatures) == ["decode", "encode", "serving_default"]
