"""The seams hold: layers import only downward (import-linter's contract in pyproject.toml), the module
graph has no cycle, only the catalogue speaks SQL, only the CLI imports the CLI, and the README's
configuration table is the one nels.config documents."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "nels"


def _modules():
    for f in sorted(PKG.rglob("*.py")):
        name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
        yield name.removesuffix(".__init__"), f, ast.parse(f.read_text(), str(f))


def _imports(name: str, tree: ast.AST, is_pkg: bool) -> set[str]:
    """Every nels module `name` imports (top-level or inside functions), resolved to module names."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("nels")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                base = ".".join(parts + ([base] if base else []))
            if base.startswith("nels"):
                out.add(base)
                out |= {f"{base}.{a.name}" for a in node.names}
    return out


def test_import_linter_contracts_are_kept():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    r = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_module_graph_has_no_cycle():
    mods = {n: (f, t) for n, f, t in _modules()}
    graph = {n: {m for m in _imports(n, t, f.name == "__init__.py") if m in mods and m != n}
             for n, (f, t) in mods.items()}
    # a package's __init__ importing its own submodules is how Python packages work, not a cycle
    graph = {n: {m for m in deps if not m.startswith(n + ".")} for n, deps in graph.items()}
    state, stack, cycles = {}, [], []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_only_the_catalogue_speaks_sql():
    offenders = []
    for name, f, tree in _modules():
        # nels.store.dialect is the catalogue's connection layer (SQLite or PostgreSQL: transactions, the schema
        # version, the change counter, SQL translation); it holds no query of the domain
        if name in ("nels.store.catalogue", "nels.store.dialect"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("execute", "executemany", "executescript"):
                # LanceDB's merge builder (table.merge_insert(key)....execute(data), nels.store.lance) is no SQL
                inner = node.value.func if isinstance(node.value, ast.Call) else None
                if isinstance(inner, ast.Attribute) and inner.attr.startswith("when_"):
                    continue
                offenders.append(f"{f.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders


def test_only_the_cli_imports_the_cli():
    offenders = [str(f.relative_to(ROOT)) for name, f, tree in _modules()
                 if not name.startswith("nels.cli") and any(m.startswith("nels.cli") for m in
                                                            _imports(name, tree, f.name == "__init__.py"))]
    assert not offenders, offenders


def test_readme_configuration_table_matches_config():
    from nels import config

    assert config.readme_table() in (ROOT / "README.md").read_text(), \
        "README's configuration table is out of date: paste nels.config.readme_table()"
