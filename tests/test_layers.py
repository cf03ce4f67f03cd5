"""The library's layers import downwards only (docs: DESIGN "Layers").

::

    top       engine/, feature_extraction.py, collect_env.py, the package itself   (anything)
    middle    data/   modeling/   evaluation/   solver.py      (each: itself and the bottom only)
    bottom    config.py  >  text/, checkpoint/  >  tasks.py  >  utils/   (downwards inside the bottom too)

tools/ and projects/ sit above the library: no library module may import them.

Every module of ``vlbert_d2`` is read with ``ast`` (nothing is imported), and every import is
checked: at module level, inside functions and classes, under ``if`` and ``try``, relative or
absolute, and ``importlib.import_module("vlbert_d2....")`` with a constant name.
"""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "vlbert_d2"

# Component (a subpackage or a module directly under the package) -> rank. A module may import
# its own component and components of a lower rank; never one of its rank (beside it) or above.
# The top rank may import anything.
TOP = 9
LAYERS = {
    "utils": 0,
    "tasks": 1,  # the task table (docs/adding_a_task.md): every layer reads it
    "text": 2,
    "checkpoint": 2,
    "config": 3,
    "data": 4,
    "modeling": 4,
    "evaluation": 4,
    "solver": 4,
    "engine": TOP,
    "feature_extraction": TOP,
    "collect_env": TOP,
    "": TOP,  # vlbert_d2/__init__.py: importing the package registers data and models
}
# Top-level names above the library.
ABOVE_LIBRARY = {"tools", "projects"}


def library_modules(root=REPO):
    """{dotted module name: path} of every .py file of the package."""
    modules = {}
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, PACKAGE)):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for filename in sorted(filenames):
            if filename.endswith(".py"):
                path = os.path.join(dirpath, filename)
                parts = os.path.relpath(path, root)[: -len(".py")].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                modules[".".join(parts)] = path
    return modules


def component(module):
    """'vlbert_d2.data.datasets.vqa' -> 'data'; 'vlbert_d2' -> ''; None outside the package."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    return parts[1] if len(parts) > 1 else ""


def _absolute(module, is_package, node):
    """The absolute module an ``ImportFrom`` names (``from ..x import y`` -> 'pkg.x')."""
    if node.level == 0:
        return node.module
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(source, module, is_package, known_modules=()):
    """(line, imported module, statement text) for every import in ``source``."""
    tree = ast.parse(source)
    lines = source.splitlines()
    found = []
    for node in ast.walk(tree):
        text = lines[node.lineno - 1].strip() if hasattr(node, "lineno") else ""
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, text) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, is_package, node)
            for alias in node.names:
                # `from . import data` imports the submodule vlbert_d2.data.
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if sub in known_modules else target, text))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__")))):
            found.append((node.lineno, node.args[0].value, text))
    return found


def violations(source, module, is_package, path, known_modules=()):
    """Messages for the imports of ``module`` that go up or sideways."""
    own = component(module)
    if own not in LAYERS:
        return [f"{path}: component '{own}' of {module} has no layer: add it to LAYERS in {__file__}"]
    rank, out = LAYERS[own], []
    # One message per import statement and module (`from x import a, b` names x once).
    for line, target, text in sorted(set(imports_of(source, module, is_package, known_modules))):
        top_name = target.split(".")[0]
        if top_name in ABOVE_LIBRARY:
            out.append(f"{path}:{line}: `{text}` imports {target}, which is above the library")
            continue
        other = component(target)
        if other is None or other == own or rank == TOP:
            continue
        if other not in LAYERS:
            out.append(f"{path}:{line}: `{text}` imports {target}, whose component '{other}' has no layer")
        elif LAYERS[other] >= rank:
            where = "above" if LAYERS[other] > rank else "beside"
            out.append(f"{path}:{line}: `{text}` imports {target}: "
                       f"{own or PACKAGE} -> {other or PACKAGE} ({where} it)")
    return out


def test_library_imports_point_down_only():
    modules = library_modules()
    assert f"{PACKAGE}.config" in modules, modules
    problems = []
    for module, path in modules.items():
        with open(path, encoding="utf-8") as f:
            source = f.read()
        problems += violations(source, module, path.endswith("__init__.py"),
                               os.path.relpath(path, REPO), modules)
    if problems:
        pytest.fail("imports that go up or sideways (layers: the docstring of tests/test_layers.py):\n  "
                    + "\n  ".join(problems), pytrace=False)


@pytest.mark.parametrize("source, module, is_package, expected", [
    # Hidden in a function, relative: modeling -> data.
    ("def f():\n    from ..data.vqa_mapper import x\n", "vlbert_d2.modeling.heads", False,
     ["x.py:2: `from ..data.vqa_mapper import x` imports vlbert_d2.data.vqa_mapper: modeling -> data (beside it)"]),
    # Absolute, inside a class, upwards from the bottom.
    ("class A:\n    import vlbert_d2.engine\n", "vlbert_d2.text.answers", False,
     ["x.py:2: `import vlbert_d2.engine` imports vlbert_d2.engine: text -> engine (above it)"]),
    # A package's relative import; `from . import` of a submodule.
    ("from .. import data\n", "vlbert_d2.utils", True,
     ["x.py:1: `from .. import data` imports vlbert_d2.data: utils -> data (above it)"]),
    # Inside the bottom: text may not import config; tools are above the library.
    ("try:\n    from ..config import f\nexcept ImportError:\n    import tools.demo\n",
     "vlbert_d2.text.answers", False,
     ["x.py:2: `from ..config import f` imports vlbert_d2.config: text -> config (above it)",
      "x.py:4: `import tools.demo` imports tools.demo, which is above the library"]),
    ("import importlib\nimportlib.import_module('vlbert_d2.evaluation')\n", "vlbert_d2.data.build", False,
     ["x.py:2: `importlib.import_module('vlbert_d2.evaluation')` imports vlbert_d2.evaluation: "
      "data -> evaluation (beside it)"]),
    # Allowed: down, own component, and the top importing anything.
    ("from ...text import build_tokenizer\nfrom ..common import x\nfrom ...config import y\n",
     "vlbert_d2.data.datasets.vqa", False, []),
    ("from ..data import x\nfrom ..modeling import y\n", "vlbert_d2.engine.trainer", False, []),
    ("import vlbert_d2\n", "vlbert_d2.collect_env", False, []),
])
def test_checker_finds_every_kind_of_import(source, module, is_package, expected):
    known = {"vlbert_d2.data", "vlbert_d2.modeling"}
    assert violations(source, module, is_package, "x.py", known) == expected


def test_every_component_has_a_layer():
    missing = sorted({component(m) for m in library_modules()} - set(LAYERS))
    assert not missing, f"add these components of {PACKAGE} to LAYERS: {missing}"
