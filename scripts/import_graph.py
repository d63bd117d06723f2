"""Import cycles among sparsearch's modules and among its packages (module-level and deferred imports alike).

    python scripts/import_graph.py        # prints each cycle; exit 1 if there is one
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, name: str, modules: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in modules else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in modules and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def main() -> int:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(files)
    graph = {name: imports(path, name, modules) for name, path in files.items()}
    # a package's __init__ re-exporting its modules is not a cycle of concepts: leave package -> own module edges out
    mod_graph = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
    top = lambda m: ".".join(m.split(".")[:2])
    pkg_graph: dict[str, set[str]] = {}
    for m, ts in graph.items():
        pkg_graph.setdefault(top(m), set()).update(top(t) for t in ts if top(t) != top(m) and top(t) != "sparsearch")
    found = [("modules", c) for c in cycles(mod_graph)] + [("packages", c) for c in cycles(pkg_graph)]
    for kind, c in found:
        print(f"{kind}: {' <-> '.join(c)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
