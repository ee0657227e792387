"""Print issue 20's structure measures of a checkout of tracked (package code only).

    .venv/bin/python bench/structure.py [PATH/TO/tracked]

Modules with a maintainability index (radon) under 20, modules over 600 lines,
reads of another object's private attributes (``obj._attr`` where ``obj`` is not
``self`` or ``cls``), the largest classes by attributes and by methods, functions
ranked C or worse by radon, import cycles among the package's modules (every
``import``/``from`` line: top level, in functions and under ``TYPE_CHECKING``),
and public docstring coverage (interrogate). radon and
interrogate are measuring tools, not dependencies: install them next to the
project (``pip install radon interrogate``) to run this.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from radon.complexity import cc_rank, cc_visit
from radon.metrics import mi_visit

#: What the issue asks for.
MI_FLOOR = 20.0
MAX_LINES = 600


def private_reads(tree: ast.AST) -> Counter[str]:
    """``obj._attr`` reads (not dunders) on anything but ``self``/``cls``, by attribute."""
    found: Counter[str] = Counter()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not isinstance(node.ctx, ast.Load):
            continue
        attr = node.attr
        if not attr.startswith("_") or (attr.startswith("__") and attr.endswith("__")):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        found[attr] += 1
    return found


def own_private_names(tree: ast.AST) -> set[str]:
    """The private attribute names this module's classes define (slots, methods,
    ``self._x =``): reading one of them on another object of the module is a module's
    own business (Python's privacy is per module), reading any other is reaching in."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.add(item.name)
                elif isinstance(item, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "__slots__" for t in item.targets
                ):
                    names |= {
                        e.value for e in ast.walk(item.value)
                        if isinstance(e, ast.Constant) and isinstance(e.value, str)
                    }
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
        ):
            names.add(node.attr)
    return {name for name in names if name.startswith("_")}


def class_sizes(tree: ast.AST) -> list[tuple[str, int, int]]:
    """(class, attributes, methods): attributes are its ``__slots__`` (without
    ``__weakref__``) or else the names it assigns on ``self``."""
    sizes = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        methods = [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        slots: set[str] = set()
        assigned: set[str] = set()
        for item in node.body:
            if isinstance(item, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__slots__" for t in item.targets
            ):
                slots = {
                    e.value for e in ast.walk(item.value)
                    if isinstance(e, ast.Constant) and isinstance(e.value, str)
                } - {"__weakref__"}
        for method in methods:
            for sub in ast.walk(method):
                if (
                    isinstance(sub, ast.Attribute)
                    and isinstance(sub.ctx, ast.Store)
                    and isinstance(sub.value, ast.Name)
                    and sub.value.id == "self"
                ):
                    assigned.add(sub.attr)
        sizes.append((node.name, len(slots or assigned), len(methods)))
    return sizes


def module_name(path: Path, package: Path) -> str:
    """The dotted name of ``path`` inside ``package`` (``tracked._api``, ``tracked``)."""
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree: ast.AST, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its body (top level,
    in functions, under ``TYPE_CHECKING``); ``from m import x`` counts ``m.x`` when
    that is a module, else ``m``."""
    here = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = here
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            base = (f"{base}.{node.module}" if node.module else base) if node.level else (
                node.module or "")
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {module for module in found if module in known and module != name}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def cycle_path(graph: dict[str, set[str]], group: list[str]) -> str:
    """One cycle through the group's first module, as ``a -> b -> a`` (breadth first)."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for target in sorted(graph[node] & members):
            if target == start:
                return " -> ".join(paths[node] + [start])
            if target not in paths:
                paths[target] = paths[node] + [target]
                queue.append(target)
    return "?"


def interrogate(package: Path) -> str:
    """Public docstring coverage: private, semi-private, magic, ``__init__`` and nested
    functions left out (what a reader of the API and of each module's surface sees)."""
    tool = Path(sys.executable).with_name("interrogate")
    out = subprocess.run(
        [str(tool), "--ignore-private", "--ignore-semiprivate", "--ignore-magic",
         "--ignore-init-method", "--ignore-init-module", "--ignore-nested-functions",
         "--fail-under", "0", str(package)],
        capture_output=True, text=True, check=False,
    ).stdout
    found = re.search(r"actual: ([\d.]+%)", out)
    return found.group(1) if found else "?"


def main() -> None:
    """Measure the package at the given path (default: ./tracked) and print a report."""
    package = Path(sys.argv[1] if len(sys.argv) > 1 else "tracked")
    files = sorted(package.rglob("*.py"))
    low_mi, long, reads, classes, complex_ = [], [], Counter[str](), [], []
    by_module: Counter[str] = Counter()
    known = {module_name(path, package) for path in files}
    graph: dict[str, set[str]] = {}
    foreign: Counter[str] = Counter()
    for path in files:
        source = path.read_text(encoding="utf-8")
        name = str(path.relative_to(package.parent))
        mi = mi_visit(source, multi=True)
        if mi < MI_FLOOR:
            low_mi.append(f"{name} {mi:.1f}")
        lines = source.count("\n")
        if lines > MAX_LINES:
            long.append(f"{name} {lines}")
        tree = ast.parse(source)
        module = module_name(path, package)
        graph[module] = imported_modules(tree, module, path.name == "__init__.py", known)
        found = private_reads(tree)
        reads.update(found)
        if found:
            by_module[name] = sum(found.values())
        own = own_private_names(tree)
        outside = sum(n for attr, n in found.items() if attr not in own)
        if outside:
            foreign[name] = outside
        classes += [(f"{name}:{c}", a, m) for c, a, m in class_sizes(tree)]
        complex_ += [
            (block.complexity, f"{name}:{block.fullname}")
            for block in cc_visit(source)
            if cc_rank(block.complexity) not in ("A", "B")
        ]
    complex_.sort(reverse=True)
    print(f"package: {package.resolve()}")
    print(f"modules with MI < {MI_FLOOR:g}: {len(low_mi)}  {', '.join(low_mi)}")
    print(f"modules over {MAX_LINES} lines: {len(long)}  {', '.join(long)}")
    print(f"private reads on other objects: {sum(reads.values())}  "
          + ", ".join(f"{m} {n}" for m, n in by_module.most_common()))
    print("  by attribute: " + ", ".join(f"{a} {n}" for a, n in reads.most_common(12)))
    print(f"  of which into another module's privates: {sum(foreign.values())}  "
          + ", ".join(f"{m} {n}" for m, n in foreign.most_common()))
    wide = max(classes, key=lambda c: c[1])
    busy = max(classes, key=lambda c: c[2])
    print(f"largest class by attributes: {wide[0]} {wide[1]} / {wide[2]}")
    print(f"largest class by methods: {busy[0]} {busy[1]} / {busy[2]}")
    worst = complex_[0] if complex_ else (0, "-")
    print(f"functions ranked C or worse: {len(complex_)}  worst {worst[0]} ({worst[1]})")
    for complexity, where in complex_:
        print(f"  {complexity:3d} {where}")
    cycles = import_cycles(graph)
    print(f"import cycles (every import line counted): {len(cycles)}")
    for group in cycles:
        print(f"  {', '.join(group)}: {cycle_path(graph, group)}")
    print(f"public docstring coverage (interrogate): {interrogate(package)}")


if __name__ == "__main__":
    main()
