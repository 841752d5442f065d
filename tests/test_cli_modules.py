"""The command modules: no import cycle between them, and a broken one stops the CLI loudly.

Regression tests for the first review's findings: `appliance.cli` and `appliance.gateway.keys_cli`
imported each other (keys_cli reached back into cli inside its commands), and cli registered the
catalog and keys commands under `except ImportError: pass`, so a command module that failed to
import simply vanished from `appliance --help`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMAND_MODULES = ("appliance.cli", "appliance.cli_config", "appliance.catalog_cli", "appliance.gateway.keys_cli")


def module_path(name: str) -> Path:
    return ROOT.joinpath(*name.split(".")).with_suffix(".py")


def imported_modules(name: str) -> set[str]:
    """Every appliance module `name` imports, at module level or inside a function."""
    package = name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(module_path(name).read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)  # `from . import catalog_cli`
    return {m for m in found if m.startswith("appliance")}


def test_command_modules_import_each_other_without_a_cycle() -> None:
    graph = {m: imported_modules(m) & set(COMMAND_MODULES) for m in COMMAND_MODULES}

    def reaches(start: str, goal: str, seen: frozenset[str] = frozenset()) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph[start])

    cycles = [m for m in COMMAND_MODULES if reaches(m, m)]
    assert not cycles, f"import cycle through {cycles}: {graph}"


def test_every_command_is_registered() -> None:
    out = subprocess.run([sys.executable, "-m", "appliance", "--help"], capture_output=True, text=True,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT), "COLUMNS": "200", "PATH": "/usr/bin:/bin"},
                         timeout=60)
    assert out.returncode == 0, out.stderr
    for command in ("check-config", "serve", "models", "pull", "plan", "keys"):
        assert f" {command} " in out.stdout, out.stdout


BREAK_ONE = """
import importlib.abc, sys
class Broken(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == {module!r}:
            raise ImportError("simulated broken command module")
        return None
sys.meta_path.insert(0, Broken())
import appliance.cli
"""


def test_a_command_module_that_fails_to_import_fails_the_cli() -> None:
    for module in ("appliance.catalog_cli", "appliance.gateway.keys_cli"):
        out = subprocess.run([sys.executable, "-c", BREAK_ONE.format(module=module)], capture_output=True,
                             text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=60)
        assert out.returncode != 0 and "simulated broken command module" in out.stderr, (module, out.stderr)
