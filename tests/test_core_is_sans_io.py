"""kproxy.core is sans-IO: importing any of it pulls in no trio, socket or h11.

Each check runs in a fresh interpreter, since this test process has long imported trio.

The ACME core signs with josepy and builds CSRs with cryptography, whose ``x509`` package
imports the stdlib's ``email.utils`` (for ``parseaddr``), which imports ``socket`` at module
level (for ``make_msgid``). So the import check counts only the I/O modules that the core
brings in beyond what those two libraries bring by themselves, and a second check reads each
core module's own imports: none of them names an I/O module (or the clock).
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import kproxy.core

CORE_MODULES = sorted(f"kproxy.core.{m.name}" for m in pkgutil.iter_modules(kproxy.core.__path__))
FORBIDDEN = ("trio", "socket", "_socket", "h11", "kproxy.runtime")
PACKAGE_DIR = str(Path(kproxy.core.__path__[0]).parent)
# Pure libraries the core may use, whatever the stdlib modules they load (see above).
PURE_LIBRARIES = ("josepy", "cryptography.x509")
# Never imported by a core module itself: the I/O modules, and the clock (a parameter).
FORBIDDEN_OWN_IMPORTS = (*FORBIDDEN, "time", "ssl", "select", "selectors", "asyncio")

# Prints the modules loaded after importing the ones named on the command line. With
# "--bare", the kproxy package is registered without running kproxy/__init__.py, so that
# only the core modules and what they import themselves are measured.
PROBE = """
import importlib, json, sys, types
args = sys.argv[1:]
if args[0] == "--bare":
    package = types.ModuleType("kproxy")
    package.__path__ = [args[1]]
    sys.modules["kproxy"] = package
    args = args[2:]
for name in args:
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""


def _loaded_after_importing(*args: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=True
    )
    return set(json.loads(result.stdout))


def _loaded_by_core(*args: str) -> set[str]:
    loaded = _loaded_after_importing(*args)
    assert set(CORE_MODULES) <= loaded
    # What the pure libraries load by themselves (in a fresh interpreter too) is not the core's.
    return loaded - _loaded_after_importing(*PURE_LIBRARIES)


def _io_modules(loaded: set[str]) -> list[str]:
    return sorted(n for n in loaded if any(n == f or n.startswith(f + ".") for f in FORBIDDEN))


def test_there_are_core_modules_to_check() -> None:
    assert {"kproxy.core.command_parser", "kproxy.core.options", "kproxy.core.snapshot"} <= set(
        CORE_MODULES
    )


def test_core_modules_import_no_io() -> None:
    assert _io_modules(_loaded_by_core("--bare", PACKAGE_DIR, *CORE_MODULES)) == []


def test_importing_every_core_module_leaves_io_out() -> None:
    assert _io_modules(_loaded_by_core(*CORE_MODULES)) == []


def test_pure_libraries_bring_no_event_loop() -> None:
    loaded = _loaded_after_importing(*PURE_LIBRARIES)
    assert [n for n in _io_modules(loaded) if n not in ("socket", "_socket")] == []


def _own_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_no_io_itself(module: str) -> None:
    path = Path(PACKAGE_DIR, *module.split(".")[1:]).with_suffix(".py")
    own = _own_imports(path)
    assert [
        n
        for n in sorted(own)
        if any(n == f or n.startswith(f + ".") for f in FORBIDDEN_OWN_IMPORTS)
    ] == []
