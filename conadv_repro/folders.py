"""Import a folder of the clone (`experiments/`, `analysis/`) as a package, by its path.

These folders sit beside the package rather than in it: the paper's grids are data a user edits, and
the analysis is meant to run on a laptop without the training code. Their top-level names are too
generic to install into a user's environment (many research projects have an `analysis` package), and
putting the clone on `sys.path` would expose every folder in it. So a folder is registered under its
package name in `sys.modules`, from its own `__init__.py`; its submodules are then found through the
package's `__path__` by the ordinary import machinery, and nothing is added to `sys.path`.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from conadv_repro.errors import UserError

CLONE = Path(__file__).resolve().parent.parent


def folder_package(name: str, folder: Path) -> ModuleType:
    """The package `name` made from `folder` (registered once; the same folder again is a no-op).

    A second folder under a name already taken is refused: two folders' modules under one name would
    mix silently.
    """
    folder = Path(folder).resolve()
    existing = sys.modules.get(name)
    if existing is not None:
        paths = [Path(p).resolve() for p in getattr(existing, "__path__", [])]
        if folder in paths:
            return existing
        raise UserError(f"cannot load {folder} as package {name!r}: {name!r} is already "
                        f"{paths[0] if paths else existing.__name__}")
    if not folder.is_dir():
        raise UserError(f"cannot load {folder} as package {name!r}: no such folder")
    init = folder / "__init__.py"
    if init.is_file():
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(folder)])
    else:  # a plain folder of modules (a user's experiments), as a namespace package would be
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(folder)]
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        if spec.loader is not None:
            spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def clone_package(name: str) -> ModuleType:
    """`experiments` or `analysis` of this clone (the supported install is an editable one)."""
    folder = CLONE / name
    if not folder.is_dir():
        raise UserError(f"no {name}/ folder at {folder}; the suite runs from a clone of its repository "
                        "with an editable install (pip install -e .)")
    return folder_package(name, folder)
