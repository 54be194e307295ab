"""The library's layering and size limits (docs/architecture.md), read from the source by
scripts/architecture.py: a change that adds an import cycle, imports a package above its own, or grows a
module or function past the limits fails here with the names to fix."""

from __future__ import annotations

import importlib.util
import os
import sys

from conftest import REPO_ROOT

_spec = importlib.util.spec_from_file_location("architecture", os.path.join(REPO_ROOT, "scripts", "architecture.py"))
architecture = sys.modules.setdefault("architecture", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(architecture)

# What each package may import (docs/architecture.md): each layer only from the layers below it.
ALLOWED = {
    "tfrecord_schema": set(),
    "mixing": {"tfrecord_schema"},
    "beam_pipelines": {"tfrecord_schema", "mixing"},
    "trainer": {"tfrecord_schema", "mixing"},
    "readers": {"tfrecord_schema", "mixing", "trainer"},
    "predictor": {"tfrecord_schema", "mixing", "beam_pipelines", "trainer", "readers"},
}


def test_no_import_cycle_even_through_imports_inside_functions():
    modules = architecture.library_modules()
    assert architecture.cycles(modules) == []
    assert architecture.cycles(modules, late=True) == []


def test_each_package_imports_only_the_layers_below_it():
    imports = architecture.package_imports(architecture.library_modules(), late=True)
    wrong = {package: sorted(set(targets) - ALLOWED[package]) for package, targets in imports.items()}
    assert {package: targets for package, targets in wrong.items() if targets} == {}


def test_no_module_or_function_over_the_limits():
    modules = architecture.library_modules()
    large = {m.path: m.lines for m in modules.values() if m.lines > architecture.MAX_MODULE_LINES}
    long = {f"{m.path}:{first} {name}": length for m in modules.values() for name, first, length in m.functions
            if length > architecture.MAX_FUNCTION_LINES}
    assert (large, long) == ({}, {})
