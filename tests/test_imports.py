"""The package's import structure: no import cycle among ffebm_sim's modules (imports inside
functions count), and a worker process that runs ngspice jobs imports neither torch nor the
reference solver.

This module imports only the standard library at the top: a worker process unpickles
:func:`loaded_modules` by importing it, and must not get torch from here.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "ffebm_sim"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def module_names(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package: dotted name -> file (a package is its ``__init__.py``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = (PACKAGE,) + path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imported(module: str, is_package: bool, node: ast.AST, modules: set[str]) -> set[str]:
    """The package's modules an ``import`` / ``from ... import`` node names (relative ones resolved)."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        # ``from pkg import sub`` imports the module pkg.sub; ``from mod import name`` imports mod
        targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source for alias in node.names]
    else:
        return set()
    found = set()
    for target in targets:
        while target and target not in modules:       # ``import ffebm_sim.a.b`` where b is a name
            target = target.rpartition(".")[0]
        if target and target != module:
            found.add(target)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere in its text (top level, functions,
    ``if TYPE_CHECKING`` blocks alike). A module's implicit import of its parent packages is
    not an edge: every submodule would otherwise form a cycle with an ``__init__`` that
    imports it, which Python resolves by design."""
    files = module_names(root)
    modules = set(files)
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        graph[name] = set().union(*(_imported(name, is_package, node, modules) for node in ast.walk(tree)))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None when it is acyclic."""
    state: dict[str, int] = {}            # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None
    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_cycles_and_function_level_imports(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import something\n")
    graph = import_graph(pkg)
    assert graph[f"{PACKAGE}.a"] == {f"{PACKAGE}.sub.b"} and graph[f"{PACKAGE}.sub.b"] == {f"{PACKAGE}.a"}
    assert find_cycle(graph) == [f"{PACKAGE}.a", f"{PACKAGE}.sub.b", f"{PACKAGE}.a"]
    assert find_cycle({"x": {"y"}, "y": set()}) is None


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    # imports inside functions are edges: get_backend imports the ngspice backend lazily
    assert f"{PACKAGE}.backends.ngspice" in graph[f"{PACKAGE}.backends"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def loaded_modules() -> list[str]:
    """What a process has imported (run inside a worker)."""
    return sorted(sys.modules)


def test_a_pool_worker_imports_neither_torch_nor_the_reference_solver():
    import numpy as np

    from ffebm_sim.backends.jobs import DeckJob
    from ffebm_sim.backends.pool import PoolEngine
    from ffebm_sim.backends.session import digest
    deck = "* divider\nV1 in 0 DC 1\nR1 in out 1k\nR2 out 0 1k\n.end\n"
    engine = PoolEngine(1)              # the real start path: spawn, start_worker, a job, a stats query
    try:
        result, = engine.run([DeckJob(deck, digest(deck), ("v1",), np.array([[2.0], [4.0]]), ("out",), "op")])
        assert result.messages == ("", "") and np.allclose(result.values[:, 0], [1.0, 2.0], rtol=0, atol=1e-12)
        assert engine.stats()[0]["pid"] == result.pid
        modules = set(engine._executor.submit(loaded_modules).result())
    finally:
        engine.close()
    assert "ffebm_sim.backends.worker" in modules and "numpy" in modules          # the probe ran in a worker
    assert "torch" not in modules
    assert not {m for m in modules if m.startswith(f"{PACKAGE}.")} & {
        f"{PACKAGE}.backends.reference", f"{PACKAGE}.backends.base", f"{PACKAGE}.backends.ngspice",
        f"{PACKAGE}.circuit", f"{PACKAGE}.netlist"}


_SCRIPT = """
from {module} import {function}      # as the script pip generates for the entry point does
if __name__ == "__main__":
    from ffebm_sim.backends.pool import PoolEngine
    from test_imports import loaded_modules
    engine = PoolEngine(1)
    try:
        print(" ".join(engine._executor.submit(loaded_modules).result()))
    finally:
        engine.close()
"""


def test_workers_of_the_ffebm_command_import_no_torch(tmp_path):
    """spawn re-runs the parent's main script in every worker: the ``ffebm`` script's top must stay light."""
    import configparser
    import os
    import subprocess
    cfg = configparser.ConfigParser()
    cfg.read(ROOT.parent / "setup.cfg")
    lines = [line.split("=", 1) for line in cfg["options.entry_points"]["console_scripts"].splitlines() if line]
    module, function = {name.strip(): where.strip() for name, where in lines}["ffebm"].split(":")
    script = tmp_path / "ffebm"
    script.write_text(_SCRIPT.format(module=module, function=function))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT.parent), str(Path(__file__).parent),
                                                       os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    modules = set(done.stdout.split())
    assert "ffebm_sim.backends.worker" in modules and module in modules
    assert "torch" not in modules and "ffebm_sim.cli" not in modules
