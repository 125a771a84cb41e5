"""The arrows point one way: experiments -> launch -> engine -> methods -> math, and analysis/ reads records.

Tables are made on a laptop from copied run folders, without the training code: every analysis module is
imported in a fresh interpreter and must not pull in torch or the training stack. And the package never
reaches into analysis/ (nor benchmarks/), which sit beside it in the clone.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys

from tests.conftest import REPO

TRAINING_STACK = ("torch", "conadv_repro.engine", "conadv_repro.methods", "conadv_repro.data",
                  "conadv_repro.distributed")
OUTSIDE = ("analysis", "benchmarks", "tests")


def test_no_analysis_module_imports_the_training_stack():
    modules = sorted(p.stem for p in (REPO / "analysis").glob("*.py") if p.stem != "__init__")
    assert len(modules) >= 8, modules
    # One interpreter, the modules one after another: the first module that pulls a name in is named.
    code = (
        "import importlib, json, sys\n"
        "from conadv_repro.folders import clone_package\n"
        "clone_package('analysis')\n"
        f"stack = {TRAINING_STACK!r}\n"
        "found = {}\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module('analysis.' + name)\n"
        "    for mod in stack:\n"
        "        if mod in sys.modules and mod not in found.values():\n"
        "            found.setdefault(name, mod)\n"
        "print(json.dumps(found))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO.parent, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {}, f"analysis modules that import the training stack: {out.stdout}"


def _imports_outside(path, root=REPO) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            # importlib.import_module("analysis.x"), clone_package("analysis"), folder_package("analysis", ...)
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if func in ("import_module", "clone_package", "folder_package", "spec_from_file_location"):
                names = [str(node.args[0].value)]
        found += [f"{path.relative_to(root)}:{node.lineno} {name}" for name in names
                  if name.split(".")[0] in OUTSIDE]
    return found


def test_the_package_never_imports_analysis_or_benchmarks():
    sources = sorted((REPO / "conadv_repro").rglob("*.py"))
    assert len(sources) > 40
    offenders = [hit for path in sources for hit in _imports_outside(path)]
    assert offenders == []


def test_the_import_scan_sees_each_kind_of_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import analysis.records\nfrom benchmarks import x\nimport importlib\n"
                     "importlib.import_module('analysis.tables')\nclone_package('analysis')\n"
                     "from conadv_repro import config\n")
    assert len(_imports_outside(probe, root=tmp_path)) == 4
