"""The package has no import cycles, counting imports inside functions."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kdbench"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """kdbench module → the kdbench modules it imports anywhere in its body."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.append(full if full in modules else base)
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycles_even_through_function_level_imports():
    cycle = find_cycle(import_graph())
    assert cycle is None, " → ".join(cycle)


# -- the layering each package documents ----------------------------------------------------------

#: Modules at the top of the package: the public surface, free to import what they serve.
TOP_LEVEL = {"kdbench", "kdbench.__main__", "kdbench.cli", "kdbench.errors", "kdbench.results", "kdbench.losses"}


def allowed_imports() -> dict[str, set[str]]:
    """Each subpackage → the packages (or single modules) its docstring's `May import:` line names."""
    import re

    out = {}
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        found = re.search(r"May import: ([^.]*(?:\.[a-z_]+)*[^.]*)\.", doc.replace("\n", " "))
        assert found, f"{init}: the docstring must say which packages it may import ('May import: a, b.')"
        names = {re.sub(r"\s*\(.*\)", "", n).strip() for n in found.group(1).split(",")}
        out[f"kdbench.{init.parent.name}"] = {f"kdbench.{n}" for n in names if n}
    return out


def test_each_package_imports_only_what_its_docstring_allows():
    allowed = allowed_imports()
    problems = []
    for module, targets in import_graph().items():
        package = ".".join(module.split(".")[:2])
        if module in TOP_LEVEL or package not in allowed:
            continue
        for target in targets:
            if target.startswith(package + ".") or target in (package, "kdbench"):
                continue
            if not any(target == a or target.startswith(a + ".") for a in allowed[package]):
                problems.append(f"{module} imports {target}")
    assert not problems, "\n".join(sorted(problems))


def test_the_top_level_keeps_only_the_public_surface():
    modules = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert len(modules) <= 12, modules
    assert set(modules) == {"__init__", "__main__", "cli", "errors", "results", "losses"}


def test_no_module_is_over_about_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 420}
    assert not long, long
