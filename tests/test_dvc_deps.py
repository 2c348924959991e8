"""dvc.yaml's code deps are derived, not remembered: each stage's import closure inside the
repository, computed statically (ast), must be covered by the stage's `deps`, else a change to a
module it runs leaves DVC serving the old output as current."""
import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages")  # the repository's own code; anything else is an installed package


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The file of a repository module `a.b.c` (a module or a package's __init__), else None."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path, root: Path) -> set[str]:
    """Every module an import statement of `path` names, at any depth (an import inside a function
    runs too when that function does), relative imports resolved; `from a import b` names both
    `a` and `a.b` (b may be a submodule)."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return out


def _with_parents(name: str) -> list[str]:
    """Importing a.b.c runs a/__init__.py and a/b/__init__.py first."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def import_closure(modules: list[str], root: Path = ROOT) -> set[Path]:
    """Files of every repository module the given modules import, transitively, relative to root."""
    seen: set[Path] = set()
    todo = [m for name in modules for m in _with_parents(name)]
    while todo:
        f = module_file(todo.pop(), root)
        if f is None or f in seen:
            continue
        seen.add(f)
        todo += [m for name in _imported(f, root) for m in _with_parents(name)]
    return {f.relative_to(root) for f in seen if not _docstring_only(f)}


def _docstring_only(path: Path) -> bool:
    """A package __init__ holding only a docstring (stages/__init__.py) runs no code."""
    body = ast.parse(path.read_text()).body
    return path.name == "__init__.py" and all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
                                              for n in body)


def stage_modules(cmd: str) -> list[str]:
    """The modules a stage's cmd runs: `python -m M [args]`, where `pipeline.launch M2` runs M2 too."""
    words = cmd.split()
    assert words[:2] == ["python", "-m"], f"unexpected stage cmd {cmd!r}"
    mods = [words[2]]
    if words[2] == "pipeline.launch":
        mods.append(words[3])
    return mods


def stages() -> dict[str, dict]:
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: s.get("do", s) for name, s in spec.items()}


def uncovered(closure: set[Path], deps: list[str]) -> list[str]:
    """Files of the closure that no dep names (a dep on a directory covers every file under it)."""
    return sorted(str(f) for f in closure
                  if not any(f == Path(d) or Path(d) in f.parents for d in deps))


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_deps_cover_its_import_closure(name):
    spec = stages()[name]
    closure = import_closure(stage_modules(spec["cmd"]))
    missing = uncovered(closure, spec["deps"])
    assert not missing, f"dvc.yaml stage {name!r} runs these repository modules but does not list them in deps: {missing}"


def test_closure_follows_relative_lazy_and_package_imports(tmp_path):
    """The closure computation itself: a relative import inside a function, `from pkg import mod`,
    and a package's __init__ (which runs on any import below it) are all followed."""
    files = {
        "stages/__init__.py": '"""doc only"""\n',
        "stages/s.py": "from pipeline import a\nfrom pipeline.tasks.t import X\n",
        "pipeline/a.py": "def f():\n    from .b import g\n",
        "pipeline/b.py": "import os\n",
        "pipeline/tasks/__init__.py": "from .u import Y\n",
        "pipeline/tasks/t.py": "X = 1\n",
        "pipeline/tasks/u.py": "from ..c import Z\n",
        "pipeline/c.py": "Z = 1\n",
        "pipeline/unused.py": "",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    got = {str(p) for p in import_closure(["stages.s"], tmp_path)}
    assert got == {"stages/s.py", "pipeline/a.py", "pipeline/b.py", "pipeline/tasks/__init__.py", "pipeline/tasks/t.py",
                   "pipeline/tasks/u.py", "pipeline/c.py"}
    assert uncovered({Path("pipeline/tasks/t.py"), Path("pipeline/a.py")}, ["pipeline/tasks"]) == ["pipeline/a.py"]
