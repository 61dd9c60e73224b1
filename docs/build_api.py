r"""Builds the API reference of `dspn_tf` from its docstrings with pdoc, and checks them.

    python docs/build_api.py [OUTPUT_DIR]        # default docs/api (not committed)

Fails (exit code 1, one line per problem) if pdoc warns (e.g. a module that does not
import), if a public module, class, function or method has no docstring, or if a
Google-style `Args:` section names a parameter the signature does not have. `.ci/run`
runs it, so a broken docstring fails CI.
"""

import importlib
import inspect
import os
import pathlib
import pkgutil
import re
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PDOC_ALLOW_EXEC", "1")  # TensorFlow's import runs `uname`.

import pdoc  # noqa: E402
import pdoc.doc  # noqa: E402
import pdoc.render  # noqa: E402

PACKAGE = "dspn_tf"
# An `Args:` entry: "    name: text", "    name (type): text" or "    a, b: text".
ARG_LINE = re.compile(r"^(\s+)(\*{0,2}[A-Za-z_][\w, *]*?)(?:\s*\([^)]*\))?:(\s|$)")
# Public functions known to lack a docstring (render internals and a CLI main); the
# check fails on any other, so the list can only shrink.
UNDOCUMENTED = {
    "dspn_tf.data.clevr_mini.main",
    "dspn_tf.data.render.camera.normalize",
    "dspn_tf.data.render.camera.lights",
    "dspn_tf.data.render.scenes.image_name",
    "dspn_tf.data.render.shading.renderer",
}
SECTION = re.compile(r"^\s*[A-Z][A-Za-z ]*:\s*$")


def documented_args(docstring):
    """The names listed in the docstring's `Args:` sections."""
    names, lines, i = [], docstring.splitlines(), 0
    while i < len(lines):
        if lines[i].strip() in ("Args:", "Arguments:"):
            indent = None
            for line in lines[i + 1 :]:
                if not line.strip():
                    continue
                if SECTION.match(line) and (indent is None or len(line) - len(line.lstrip()) < indent):
                    break
                match = ARG_LINE.match(line)
                if indent is None and match:
                    indent = len(match.group(1))
                if match and len(match.group(1)) == indent:
                    names += [name.strip().lstrip("*") for name in match.group(2).split(",")]
                elif len(line) - len(line.lstrip()) < (indent or 0):
                    break
        i += 1
    return names


def parameters(doc):
    try:
        return set(inspect.signature(doc.obj).parameters)
    except (TypeError, ValueError):
        return None


def public_members(namespace):
    """The public classes and functions defined in `namespace` (a module or class), recursively."""
    for member in namespace.own_members:
        if member.name.startswith("_") or isinstance(member, pdoc.doc.Variable):
            continue
        if isinstance(namespace, pdoc.doc.Module) and member.taken_from[0] != namespace.modulename:
            continue  # Re-exported from another module: checked there.
        yield member
        if isinstance(member, pdoc.doc.Class):
            yield from public_members(member)


def overrides(member):
    """Whether `member` is a method overriding a base class's (Keras' `call`, `build`, ...).

    Its contract is the base class's; a class documents its call arguments in its own
    docstring ("Call arguments:").
    """
    if not isinstance(member, pdoc.doc.Function) or "." not in member.qualname:
        return False
    owner = getattr(sys.modules.get(member.modulename), member.qualname.rsplit(".", 1)[0], None)
    return inspect.isclass(owner) and any(hasattr(base, member.name) for base in owner.__mro__[1:])


def check(module, problems):
    """Appends a line per undocumented public member or `Args:` name not in a signature."""
    if not module.docstring.strip():
        problems.append(f"{module.fullname}: module without a docstring")
    for member in public_members(module):
        if overrides(member) or member.fullname in UNDOCUMENTED:
            continue
        if not member.docstring.strip():
            problems.append(f"{member.fullname}: no docstring")
            continue
        if isinstance(member, pdoc.doc.Class):
            init = member.members.get("__init__")
            params = parameters(init) if isinstance(init, pdoc.doc.Function) else None
        else:
            params = parameters(member) if isinstance(member, pdoc.doc.Function) else None
        if params is None or any(p.startswith("*") for p in params):
            continue
        for name in documented_args(member.docstring):
            if name not in params:
                problems.append(f"{member.fullname}: Args: names `{name}`, which is not a parameter")


def module_names():
    """`dspn_tf` and its direct submodules (pdoc walks each one's own submodules).

    Listed explicitly because pdoc follows `dspn_tf.__all__`, which names classes and only
    one module (`losses`, documented through it).
    """
    package = importlib.import_module(PACKAGE)
    submodules = [info.name for info in pkgutil.iter_modules(package.__path__)]
    return [PACKAGE] + [
        f"{PACKAGE}.{name}" for name in submodules if not name.startswith("_") and name not in package.__all__
    ]


# pdoc's warning about an annotation it cannot evaluate, naming the annotated object.
ANNOTATION_WARNING = re.compile(r"^Error parsing type annotation .* for (\S+?)\.? Import of ")


def foreign_annotation(message):
    """True for pdoc's annotation warning about another package's object.

    A class inheriting from a library class (a TFDS `BuilderConfig`) lists the library's
    members, whose string annotations may not resolve outside the library; that is no
    problem of our docstrings. The same warning about a `dspn_tf` object still fails.
    """
    match = ANNOTATION_WARNING.match(message)
    return bool(match) and not match.group(1).startswith(PACKAGE + ".")


def build(output_dir):
    """Writes the HTML reference to `output_dir`; returns the problems found (empty if none)."""
    pdoc.render.configure(docformat="google", show_source=False, search=True, footer_text=PACKAGE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = module_names()
        pdoc.pdoc(*names, output_directory=pathlib.Path(output_dir))
        modules = [pdoc.doc.Module.from_name(name) for name in names]
    pdoc_dir = os.path.dirname(pdoc.__file__)
    problems = [
        f"pdoc: {w.message}"
        for w in caught
        if w.filename.startswith(pdoc_dir) and not foreign_annotation(str(w.message))
    ]
    for module in modules:
        check(module, problems)
    return problems


def main(argv):
    output_dir = argv[1] if len(argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "api")
    problems = build(output_dir)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} docstring problem(s); the reference in {output_dir} is incomplete.", file=sys.stderr)
        return 1
    print(f"API reference written to {output_dir}/{PACKAGE}.html")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
