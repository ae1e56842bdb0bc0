"""The report package has no import cycles, counting imports inside functions."""

import ast
from pathlib import Path

import kdbench

PACKAGE = Path(kdbench.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    """Every kdbench module `path` imports, anywhere in the file (module level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in known else node.module)
    return {m for m in out if m in known}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path, set(files)) for name, path in files.items()}


def test_report_modules_have_no_import_cycle():
    graph = _graph()
    report = sorted(m for m in graph if m == "kdbench.report" or m.startswith("kdbench.report."))
    assert "kdbench.report.views" in report and "kdbench.report.plots" in report
    assert graph["kdbench.report"] == set(), "the package __init__ imports nothing"
    for start in report:
        # Depth-first search for a path from `start` back to itself.
        stack, seen = [(start, (start,))], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                assert nxt != start, "import cycle: " + " → ".join(path + (nxt,))
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + (nxt,)))


def test_no_module_imports_the_old_report_modules():
    graph = _graph()
    for name, deps in graph.items():
        assert not deps & {"kdbench.stats", "kdbench.tables", "kdbench.plots"}, name
