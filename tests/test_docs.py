"""docs/build_api.py: the docstring checks that make a broken docstring fail CI."""

import functools
import glob
import importlib.util
import os
import re
import sys
import textwrap

import pdoc.doc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_build_api():
    spec = importlib.util.spec_from_file_location("build_api", os.path.join(ROOT, "docs", "build_api.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_api = load_build_api()


def test_documented_args_reads_google_sections():
    doc = textwrap.dedent(
        """\
        Does a thing.

        Args:
            x: The input,
                continued on a second line: not a name.
            y (int): A typed one.
            a, b: Two at once.
            **kwargs: Passed on.

        Returns:
            value: not an argument.
        """
    )
    assert build_api.documented_args(doc) == ["x", "y", "a", "b", "kwargs"]


def test_check_reports_missing_docstrings_and_wrong_arg_names(tmp_path, monkeypatch):
    (tmp_path / "sample_docs_module.py").write_text(
        textwrap.dedent(
            '''\
            """A sample module."""


            def good(x, y):
                """Adds.

                Args:
                    x: One.
                    y: Two.
                """
                return x + y


            def renamed(x, z):
                """Adds.

                Args:
                    x: One.
                    y: Two (the parameter is called z).
                """
                return x + z


            def bare(x):
                return x


            def _private(x):
                return x


            class Thing:
                """A thing.

                Args:
                    size: Its size.
                    colour: Not a parameter.
                """

                def __init__(self, size):
                    self.size = size

                def method(self):
                    return self.size

                def __repr__(self):
                    return "Thing"
            '''
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module = pdoc.doc.Module(importlib.import_module("sample_docs_module"))
    problems = []
    build_api.check(module, problems)
    sys.modules.pop("sample_docs_module", None)
    assert sorted(problems) == [
        "sample_docs_module.Thing.method: no docstring",
        "sample_docs_module.Thing: Args: names `colour`, which is not a parameter",
        "sample_docs_module.bare: no docstring",
        "sample_docs_module.renamed: Args: names `y`, which is not a parameter",
    ]


def test_every_public_module_is_documented():
    names = build_api.module_names()
    assert names[0] == "dspn_tf" and "dspn_tf.dspn" in names and "dspn_tf.data" in names
    assert "dspn_tf.losses" not in names  # Reached through dspn_tf.__all__; listing it twice makes pdoc warn.


def test_only_annotation_warnings_about_other_packages_are_ignored():
    theirs = (
        "Error parsing type annotation utils.VersionOrStr | None for "
        "tensorflow_datasets.core.dataset_builder.BuilderConfig.version. Import of Version failed: name 'Version' is "
        "not defined"
    )
    ours = "Error parsing type annotation Foo for dspn_tf.models.SetModel.compile. Import of Foo failed: no Foo"
    assert build_api.foreign_annotation(theirs)
    assert not build_api.foreign_annotation(ours)
    assert not build_api.foreign_annotation("Cannot find spec for dspn_tf.nothing")


def doc_pages():
    """The README, the changelog and the pages under docs/ and benchmarks/."""
    pages = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "CHANGELOG.md")]
    pages += sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
    return pages + sorted(glob.glob(os.path.join(ROOT, "benchmarks", "*.md")))


def _prose(path):
    """The text of a Markdown page without its code blocks."""
    with open(path) as f:
        return re.sub(r"^```.*?^```$", "", f.read(), flags=re.MULTILINE | re.DOTALL)


def link_targets(page):
    """The targets of the Markdown links in a page's prose (code blocks and inline code left out)."""
    return re.findall(r"\]\(([^)\s]+)\)", re.sub(r"`[^`\n]*`", "", _prose(page)))


@functools.cache
def heading_anchors(path):
    """The anchors GitHub gives the headings of a Markdown page (a repeated heading gets -1, -2, ...)."""
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6} +(.+?) *$", _prose(path), flags=re.MULTILINE):
        heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # A link in a heading keeps its text.
        anchor = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(f"{anchor}-{seen[anchor]}" if anchor in seen else anchor)
        seen[anchor] = seen.get(anchor, 0) + 1
    return anchors


def test_relative_links_of_the_readme_and_docs_resolve():
    pages = doc_pages()
    assert os.path.join(ROOT, "docs", "your_data.md") in pages
    broken = []
    for page in pages:
        for target in link_targets(page):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # A web address or an anchor on the same page.
            path = os.path.normpath(os.path.join(os.path.dirname(page), target.split("#")[0]))
            if not os.path.exists(path):
                broken.append(f"{os.path.relpath(page, ROOT)}: {target}")
    assert not broken
    with open(os.path.join(ROOT, "README.md")) as f:
        assert "(docs/your_data.md)" in f.read()


def test_heading_anchors_follow_githubs_rule():
    page = os.path.join(ROOT, "docs", "results.md")
    anchors = heading_anchors(page)
    assert "random-set-auto-encoding-idspn-42-at-the-published-budget" in anchors
    assert "clevr-at-cpu-scale-boxes-and-states-from-images-10--20--30-inner-steps" in anchors


def test_anchors_of_links_in_the_readme_and_docs_name_a_heading():
    checked, broken = 0, []
    for page in doc_pages():
        for target in link_targets(page):
            if re.match(r"[a-z]+:", target) or "#" not in target:
                continue
            name, anchor = target.split("#", 1)
            path = os.path.normpath(os.path.join(os.path.dirname(page), name)) if name else page
            if not path.endswith(".md"):
                continue
            checked += 1
            if not os.path.exists(path) or anchor not in heading_anchors(path):
                broken.append(f"{os.path.relpath(page, ROOT)}: {target}")
    assert checked >= 40  # The README and docs link into sections; a change in the pattern would skip them all.
    assert not broken
