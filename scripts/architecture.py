"""How the library's modules depend on each other, and how large they are.

    python scripts/architecture.py [--json report.json]

Prints the module-level import cycles, the imports between packages, the largest modules and the
longest functions of the library packages (tests, benchmarks and scripts are not library). Only
imports at module level count: an import inside a function is a deliberate late import (a heavy or
optional dependency) and cannot make a cycle at import time. `tests/test_architecture.py` holds the
limits; docs/architecture.md says what each package may import.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from dataclasses import dataclass, field

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY_PACKAGES = ("tfrecord_schema", "mixing", "beam_pipelines", "trainer", "readers", "predictor")
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 100


@dataclass
class Module:
    name: str
    path: str
    lines: int
    imports: set[str] = field(default_factory=set)  # library modules imported at module level
    late_imports: set[str] = field(default_factory=set)  # ... inside functions or for type checking only
    functions: list[tuple[str, int, int]] = field(default_factory=list)  # (qualified name, first line, length)


def library_modules(root: str = REPO_ROOT) -> dict[str, Module]:
    """Every library module by dotted name, with its module-level imports of other library modules."""
    paths = {}
    for package in LIBRARY_PACKAGES:
        for folder, _, files in os.walk(os.path.join(root, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    dotted = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                    paths[dotted.removesuffix(".__init__")] = path
    modules = {}
    for dotted, path in sorted(paths.items()):
        with open(path, encoding="utf-8") as f:
            source = f.read()
        tree = ast.parse(source, path)
        module = Module(dotted, os.path.relpath(path, root), source.count("\n"))
        is_package = path.endswith("__init__.py")
        top_level = set()
        for node in tree.body:
            top_level.update(_resolved(_imported(node, dotted, is_package), paths, dotted))
        every = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                every.update(_resolved(_imported(node, dotted, is_package, everything=True), paths, dotted))
        module.imports, module.late_imports = top_level, every - top_level
        module.functions = list(_functions(tree))
        modules[dotted] = module
    return modules


def _resolved(targets, paths: dict[str, str], own: str):
    for target in targets:
        # `from package import name` imports package.name when that is a module.
        resolved = target if target in paths else target.rpartition(".")[0]
        if resolved in paths and resolved != own:
            yield resolved


def _imported(node: ast.stmt, module: str, is_package: bool, everything: bool = False):
    if isinstance(node, (ast.If, ast.Try)) and not everything:
        # `if TYPE_CHECKING:` imports never run; try/except imports do.
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        for child in node.body + getattr(node, "orelse", []) + [
                n for h in getattr(node, "handlers", []) for n in h.body]:
            yield from _imported(child, module, is_package)
        return
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".")
            base = base[:len(base) - node.level + (1 if is_package else 0)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        yield prefix
        for alias in node.names:
            yield f"{prefix}.{alias.name}"


def _functions(tree: ast.Module, prefix: str = ""):
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield f"{prefix}{node.name}", node.lineno, node.end_lineno - node.lineno + 1
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")


def cycles(modules: dict[str, Module], late: bool = False) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted; with `late`,
    imports inside functions and for type checking count too."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        on_stack.add(name)
        for other in sorted(modules[name].imports | (modules[name].late_imports if late else set())):
            if other not in index:
                visit(other)
                low[name] = min(low[name], low[other])
            elif other in on_stack:
                low[name] = min(low[name], index[other])
        if low[name] == index[name]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == name:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(modules)))
    for name in sorted(modules):
        if name not in index:
            visit(name)
    return sorted(found)


def package_imports(modules: dict[str, Module], late: bool = False) -> dict[str, list[str]]:
    """Which library packages each package imports (at module level; with `late`, anywhere)."""
    edges: dict[str, set[str]] = {p: set() for p in LIBRARY_PACKAGES}
    for module in modules.values():
        source = module.name.split(".")[0]
        for target in module.imports | (module.late_imports if late else set()):
            if target.split(".")[0] != source:
                edges[source].add(target.split(".")[0])
    return {p: sorted(e) for p, e in edges.items()}


def report(root: str = REPO_ROOT) -> dict:
    modules = library_modules(root)
    largest = sorted(modules.values(), key=lambda m: -m.lines)
    functions = sorted(((m.path, name, first, length) for m in modules.values()
                        for name, first, length in m.functions), key=lambda f: -f[3])
    return {
        "modules": len(modules),
        "cycles": cycles(modules),
        "cycles_counting_late_imports": cycles(modules, late=True),
        "package_imports": package_imports(modules),
        "package_imports_counting_late": package_imports(modules, late=True),
        "largest_modules": [(m.path, m.lines) for m in largest if m.lines > MAX_MODULE_LINES * 0.8],
        "long_functions": [f for f in functions if f[3] > MAX_FUNCTION_LINES * 0.8],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="also write the report to this JSON file")
    args = parser.parse_args(argv)
    result = report()
    print(f"{result['modules']} library modules")
    print(f"\nmodule-level import cycles: {len(result['cycles'])}")
    for component in result["cycles"]:
        print("  " + " <-> ".join(component))
    print(f"cycles counting imports inside functions and for type checking: "
          f"{len(result['cycles_counting_late_imports'])}")
    for component in result["cycles_counting_late_imports"]:
        print("  " + " <-> ".join(component))
    print("\npackage imports (module level; [late] where only inside functions):")
    for package, targets in result["package_imports_counting_late"].items():
        names = [t if t in result["package_imports"][package] else f"{t} [late]" for t in targets]
        print(f"  {package:16s} -> {', '.join(names) or '(none)'}")
    print(f"\nmodules over {int(MAX_MODULE_LINES * 0.8)} lines (limit {MAX_MODULE_LINES}):")
    for path, lines in result["largest_modules"]:
        print(f"  {lines:5d}  {path}{'  OVER' if lines > MAX_MODULE_LINES else ''}")
    print(f"\nfunctions over {int(MAX_FUNCTION_LINES * 0.8)} lines (limit {MAX_FUNCTION_LINES}):")
    for path, name, first, length in result["long_functions"]:
        print(f"  {length:5d}  {path}:{first} {name}{'  OVER' if length > MAX_FUNCTION_LINES else ''}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
