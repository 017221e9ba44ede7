"""The package's shape: no import cycles, imports at module level unless deferred on purpose,
section configs importable without torch, every default written once."""

import ast
import subprocess
import sys

from helpers import REPO

PACKAGE = REPO / "infini_bench"
# Imports made inside functions on purpose, with the reason (the code says so where they are).
DEFERRED = {
    ("infini_bench/__init__.py", "infini_bench.models"): "`import infini_bench` stays cheap (no torch)",
    ("infini_bench/run.py", "infini_bench.pipeline"): "`--help` and bad flags answer without torch",
    ("infini_bench/run.py", "infini_bench.sweep"): "as above",
    ("infini_bench/run.py", "infini_bench.device"): "as above",
    ("infini_bench/run.py", "infini_bench.suites"): "as above",
    ("infini_bench/sweep.py", "ray"): "importing Ray takes seconds; only sweeps need it",
    ("infini_bench/sweep.py", "ray.tune.schedulers"): "as above",
}


def module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path):
    """(imported module, inside a function?) for every import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    nested = {id(n) for f in functions for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from . import x` imports the submodule x
            names = [f"{base}.{a.name}" if not node.module else base for a in node.names]
        else:
            continue
        for name in names:
            yield name, id(node) in nested


def package_modules():
    return {module_name(p): p for p in PACKAGE.rglob("*.py") if "_startup" not in p.parts}


def test_no_import_cycles_inside_the_package():
    """Every import between infini_bench modules, at module level or inside functions, points
    one way: the graph of modules has no cycle (depth-first search)."""
    modules = package_modules()

    def owner(name):  # the package module an import refers to (a name inside a module: the module)
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {m: {owner(n) for n, _ in imports(p)} - {None, m} for m, p in modules.items()}
    # A submodule's import of its own package's __init__ is implied by Python, not a cycle.
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    assert sum(len(d) for d in graph.values()) > 40  # the walk really sees the imports
    state, path = {}, []

    def visit(m):
        state[m] = "open"
        path.append(m)
        for d in graph[m]:
            assert state.get(d) != "open", "import cycle: " + " -> ".join(path[path.index(d):] + [d])
            if d not in state:
                visit(d)
        path.pop()
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m)


def test_imports_are_at_module_level_unless_deferred_on_purpose():
    found = set()
    for path in [*PACKAGE.rglob("*.py"), *(REPO / "tasks").rglob("*.py")]:
        if "_startup" in path.parts:  # the lm-eval start-up hook imports lazily by design
            continue
        for name, inside in imports(path):
            if inside:
                found.add((str(path.relative_to(REPO)), name))
    assert found == set(DEFERRED), (sorted(found - set(DEFERRED)), sorted(set(DEFERRED) - found))


def test_section_configs_and_paths_import_without_torch_or_transformers():
    code = ("import sys, infini_bench.config, infini_bench.paths, infini_bench.cli; "
            "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_defaults_are_written_once():
    """The pass-key depths, the position bins and the distractor count appear as literals only
    in infini_bench/config.py; everything else (package, tasks, suite files) names them."""
    literals = {"(0, 25, 50, 75, 100)": "PASSKEY_DEPTHS", "(0, 16, 32, 64, 96)": "REFERENCE_BINS"}
    for path in [*PACKAGE.rglob("*.py"), *(REPO / "tasks").rglob("*.py")]:
        if path.name == "config.py":
            continue
        text = path.read_text()
        for literal, name in literals.items():
            assert literal not in text, f"{path}: {literal} is {name}"
        assert "distractors, 10" not in text and "num_distractors: int = 10" not in text, path
    for path in (REPO / "configs").rglob("*.yaml"):
        text = path.read_text()
        assert "[0, 25, 50, 75, 100]" not in text and "[0, 16, 32, 64, 96]" not in text, path
        assert "num_distractors: 10" not in text, path
