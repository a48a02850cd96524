"""The package layout: imports flow one way, no private names cross modules, modules stay small.

Data flows config -> plan -> model -> train -> study -> stats -> report (DESIGN.md). The
graph below holds every import that runs (at module level or inside a function); imports
under ``if TYPE_CHECKING:`` are for annotations only and are left out.
"""

import ast
from pathlib import Path

import pytest

LAB = Path(__file__).resolve().parent.parent / "lab"
MAX_LINES = 520  # "a few hundred lines that hold one concern"

# Each top-level part of the package, by layer: a module may import only from its own part
# or from parts of a lower layer.
LAYERS = {
    "errors": 0, "provenance": 0, "yamlfile": 0, "config": 1, "tasks": 2, "model": 3, "eval": 4, "train": 5,
    "study": 6, "stats": 6, "report": 7, "bench": 8, "cli": 9, "__main__": 9,
}


def module_name(path: Path) -> str:
    parts = ["lab", *path.relative_to(LAB).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                for n in ast.walk(sub):
                    skip.add(id(n))
    return skip


def imports(path: Path):
    """(imported module, imported names) for every runtime import of a file."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_blocks(tree)
    me = module_name(path)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:  # relative import
                base = me.split(".")[: -node.level] if path.name != "__init__.py" else \
                    me.split(".")[: len(me.split(".")) - node.level + 1]
                mod = ".".join([*base, mod] if mod else base)
            yield mod, [a.name for a in node.names]


FILES = sorted(LAB.rglob("*.py"))
MODULES = {module_name(p) for p in FILES}


def resolve(mod: str, names: list[str]) -> set[str]:
    """The lab modules an import statement loads (a package's submodules included)."""
    out = set()
    if mod in MODULES:
        out.add(mod)
    for n in names:
        if f"{mod}.{n}" in MODULES:
            out.add(f"{mod}.{n}")
    return out


def graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {}
    for p in FILES:
        me = module_name(p)
        g[me] = set()
        for mod, names in imports(p):
            if mod == "lab" or mod.startswith("lab."):
                g[me] |= resolve(mod, names) - {me}
    return g


def part(mod: str) -> str:
    return mod.split(".")[1] if mod.count(".") else "__init__"


def test_no_import_cycle():
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str):
        state[m] = 1
        stack.append(m)
        for n in sorted(g.get(m, ())):
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


def test_imports_flow_down_the_layers():
    bad = []
    for m, deps in graph().items():
        if m == "lab":
            continue
        for d in deps:
            if d == "lab":
                continue
            a, b = part(m), part(d)
            if a != b and LAYERS[b] > LAYERS[a]:
                bad.append(f"{m} imports {d} ({b} is above {a})")
    assert not bad, "\n".join(bad)


def test_no_private_name_crosses_modules():
    bad = []
    for p in FILES:
        for mod, names in imports(p):
            if not (mod == "lab" or mod.startswith("lab.")):
                continue
            for n in names:
                if n.startswith("_") and n != "__version__":
                    bad.append(f"{module_name(p)} imports {mod}.{n}")
            if mod.rsplit(".", 1)[-1].startswith("_") and mod.rsplit(".", 1)[-1] != "__main__":
                bad.append(f"{module_name(p)} imports private module {mod}")
    assert not bad, "\n".join(bad)


def test_no_optuna_private_attribute():
    bad = []
    for p in FILES:
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("_storage", "_trial_id", "_trial",
                                                                  "_study_id"):
                bad.append(f"{p.relative_to(LAB.parent)}:{node.lineno} uses .{node.attr}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(LAB.parent)))
def test_module_is_small(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.name} has {n} lines; split it by concern"


def test_the_checker_sees_a_cycle(tmp_path, monkeypatch):
    """The cycle check itself: two modules importing each other are reported."""
    pkg = tmp_path / "lab"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("from lab.a.y import f\n")
    (pkg / "a" / "y.py").write_text("def f():\n    from lab.a import x\n")
    monkeypatch.setattr(__import__(__name__), "LAB", pkg)
    monkeypatch.setattr(__import__(__name__), "FILES", sorted(pkg.rglob("*.py")))
    monkeypatch.setattr(__import__(__name__), "MODULES",
                        {module_name(p) for p in sorted(pkg.rglob("*.py"))})
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_no_import_cycle()
