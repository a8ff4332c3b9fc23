"""kproxy.core is sans-IO: importing any of it pulls in no trio, socket or h11.

Each check runs in a fresh interpreter, since this test process has long imported trio.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import kproxy.core

CORE_MODULES = sorted(f"kproxy.core.{m.name}" for m in pkgutil.iter_modules(kproxy.core.__path__))
FORBIDDEN = ("trio", "socket", "_socket", "h11", "kproxy.runtime")
PACKAGE_DIR = str(Path(kproxy.core.__path__[0]).parent)

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
    loaded = set(json.loads(result.stdout))
    assert set(CORE_MODULES) <= loaded
    return loaded


def _io_modules(loaded: set[str]) -> list[str]:
    return sorted(n for n in loaded if any(n == f or n.startswith(f + ".") for f in FORBIDDEN))


def test_there_are_core_modules_to_check() -> None:
    assert {"kproxy.core.command_parser", "kproxy.core.options", "kproxy.core.snapshot"} <= set(
        CORE_MODULES
    )


def test_core_modules_import_no_io() -> None:
    assert _io_modules(_loaded_after_importing("--bare", PACKAGE_DIR, *CORE_MODULES)) == []


def test_importing_every_core_module_leaves_io_out() -> None:
    assert _io_modules(_loaded_after_importing(*CORE_MODULES)) == []
