"""One direction of dependencies: the package's imports follow its pipeline.

:data:`LAYERS` is the order, lowest first (README's "How the code is laid out" table follows it). A module may
import from its own layer or a lower one, never from a higher one; imports inside functions count as much as those
at the top of a file (they run as soon as the function does). Imports under ``if TYPE_CHECKING:`` are allowed in
any direction: they are erased at run time, so they load nothing and cannot form a cycle; they only let an
annotation name a type.

Besides the layers: no import cycle, neither between packages (two units of one layer importing each other) nor
between modules; importing a package's core has no side effects (it loads no web server, search, Spark or
segmenter; it leaves Optuna's logging level and matplotlib's backend as they were); README's table is this order.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import lungscope

PACKAGE = Path(lungscope.__file__).resolve().parent
SOURCE = PACKAGE.parent
README = Path(__file__).resolve().parents[1] / "README.md"

# The units of lungscope (a subpackage or a top-level module; ``__init__`` is lungscope/__init__.py), lowest first.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__init__", "errors", "options", "text", "progress", "device", "checkpoint", "bundled"),  # base; bundled: models
    ("data",),  # files, labels, splits, transforms (the roi choices; the lung crop is registered by segmentation)
    ("models",),
    ("segmentation", "orientation"),  # orientation: the check that refuses turned or inverted X-rays
    ("inference",),  # a loaded Classifier: below everything that loads one (features, evaluation, training, explain)
    ("features",),  # a Classifier's feature vectors and their Parquet file, which training.head reads
    ("evaluation",),  # metrics, calibration, operating points, reports, plots (training curves included)
    ("training",),  # stores operating points and patient-bootstrap CIs with evaluation's functions
    ("explain",),
    ("predict", "export", "sites"),
    ("serve",),
    ("cli",),
)
LAYER_OF = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = ["lungscope", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def unit_of(module: str) -> str:
    """``lungscope.training.tune`` -> ``training``; ``lungscope`` -> ``__init__``."""
    return module.split(".")[1] if module.count(".") else "__init__"


def test_readme_table_follows_the_layers() -> None:
    """README's "How the code is laid out" lists the same layers, in the same order, with the same units."""
    section = README.read_text().split("## How the code is laid out", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[2] for line in section.splitlines() if line.startswith("| ") and "`" in line.split("|")[2]]
    readme = [tuple(re.sub(r"\.py$|/$", "", name) for name in re.findall(r"`([^`]+)`", row)) for row in rows]
    assert readme == [tuple(unit for unit in units if unit != "__init__") for units in LAYERS]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Every node below ``node`` (function bodies included) except the bodies of ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield other
                yield from _runtime_nodes(other)
            continue
        yield child
        yield from _runtime_nodes(child)


def imports(module: str) -> list[tuple[int, str]]:
    """(line, imported lungscope module) of every run-time import in ``module``, however deep in its code."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from lungscope import cli` imports lungscope.cli
                submodule = f"{target}.{alias.name}"
                found.append((node.lineno, submodule if submodule in MODULES else target))
    return [(line, name) for line, name in dict.fromkeys(found) if name == "lungscope" or name.startswith("lungscope.")]


def test_every_unit_has_a_layer() -> None:
    """A new top-level module or subpackage must be placed in LAYERS (and in README's table)."""
    assert sorted({unit_of(m) for m in MODULES} - set(LAYER_OF)) == []
    assert sorted(set(LAYER_OF) - {unit_of(m) for m in MODULES}) == []


def test_no_import_from_a_higher_layer() -> None:
    upward = [
        f"{MODULES[module].relative_to(SOURCE)}:{line} imports {target} ({unit_of(module)}, "
        f"layer {LAYER_OF[unit_of(module)]} -> {unit_of(target)}, layer {LAYER_OF[unit_of(target)]})"
        for module in MODULES
        for line, target in imports(module)
        if LAYER_OF[unit_of(target)] > LAYER_OF[unit_of(module)]
    ]
    assert upward == [], "imports against the layer order:\n" + "\n".join(upward)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    why: dict[tuple[str, str], list[str]] = {}
    for module in MODULES:
        for line, target in imports(module):
            if unit_of(target) != unit_of(module):
                graph.setdefault(unit_of(module), set()).add(unit_of(target))
                why.setdefault((unit_of(module), unit_of(target)), []).append(f"{module}:{line} -> {target}")
    cycles = _cycles(graph)
    assert cycles == [], "import cycles between packages:\n" + "\n".join(
        f"{cycle}: " + "; ".join(edge for (a, b), edges in sorted(why.items()) if {a, b} <= set(cycle)
                                 for edge in edges)
        for cycle in cycles)


def test_no_import_cycle_between_modules() -> None:
    """Not even a lazy one (an import inside a function) between two modules of one package. The implicit import of
    a module's parent package (whose ``__init__`` may import its submodules) is not an edge here."""
    graph = {module: {target for _, target in imports(module) if target != module} for module in MODULES}
    assert _cycles(graph) == []


def loaded_after(statement: str) -> set[str]:
    """The modules a fresh interpreter has loaded after ``statement``."""
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    return set(_run(code).split())


def _run(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SOURCE), os.environ.get("PYTHONPATH", "")])}
    env.pop("MPLBACKEND", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _among(loaded: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in loaded if any(m == name or m.startswith(name + ".") for name in names))


@pytest.mark.slow
def test_data_layer_needs_no_segmenter() -> None:
    """The data layer loads nothing above it; ``roi: lungs`` crops once segmentation has registered its crop."""
    code = """from lungscope.data.transforms import build_preprocess
from lungscope.errors import ConfigError
loaded = sorted(m for m in sys.modules
                if m.startswith("lungscope.") and m.split(".")[1] not in ("data", "errors", "options"))
try:
    build_preprocess(64, roi="lungs")
except ConfigError as error:
    print("refused:", error)
import lungscope.segmentation
print(loaded, type(build_preprocess(64, roi="lungs").transforms[1]).__name__)"""
    out = _run("import sys\n" + code).splitlines()
    assert out[0].startswith("refused: roi 'lungs' needs its crop step: import lungscope.segmentation")
    assert out[1] == "[] LungCrop"


@pytest.mark.slow
def test_training_config_loads_no_search() -> None:
    loaded = loaded_after("from lungscope.training import TrainConfig")
    assert _among(loaded, ("optuna", "fastapi", "pyspark")) == []


@pytest.mark.slow
def test_importing_tune_leaves_optuna_logging_alone() -> None:
    code = ("import optuna\nbefore = optuna.logging.get_verbosity()\nimport lungscope.training.tune\n"
            "print(before, optuna.logging.get_verbosity())")
    before, after = _run(code).split()
    assert after == before


@pytest.mark.slow
def test_explain_core_loads_no_commands() -> None:
    loaded = loaded_after("from lungscope.explain import explain")
    forbidden = ("fastapi", "optuna", "pyspark", "lungscope.segmentation.segmenter", "lungscope.predict")
    assert _among(loaded, forbidden) == []


PLOTTING = sorted(m for m, path in MODULES.items() if "matplotlib" in path.read_text())


@pytest.mark.slow
def test_plotting_modules_keep_the_backend() -> None:
    """Figures are matplotlib.figure.Figure objects: importing a module that draws never picks or switches the
    backend (a notebook's or a GUI's stays theirs)."""
    assert "lungscope.evaluation.plots" in PLOTTING
    statements = "\n".join(f"import {m}" for m in PLOTTING)
    code = f"import matplotlib\nmatplotlib.use('svg')\n{statements}\nprint(matplotlib.get_backend())"
    assert _run(code).split() == ["svg"]
