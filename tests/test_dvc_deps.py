"""dvc.yaml's code deps are derived, not remembered: each stage's code deps (its entries under
pipeline/ and stages/) must be exactly its import closure inside the repository, computed statically
(ast). A missing one lets DVC serve an old output as current after a change to a module the stage
runs; an extra one reruns the stage for a change to code it never runs.

`python tests/test_dvc_deps.py` prints every stage's correct code deps (paste them into dvc.yaml);
a failing test names the deps to add and to remove."""
import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages")  # the repository's own code; anything else is an installed package
DIR_DEPS = ("pipeline/tasks",)  # declared as one directory dep: its modules and the vendored data they read


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


def code_deps(deps: list[str]) -> list[str]:
    """The deps that are repository code (under pipeline/ or stages/); the rest are data and artifacts."""
    return [d for d in deps if Path(d).parts[0] in PACKAGES]


def expected_code_deps(cmd: str, root: Path = ROOT) -> list[str]:
    """The code deps a stage with this cmd must declare: its import closure, the stage's own module
    first, then pipeline/ in alphabetical order, a DIR_DEPS directory once for all files under it."""
    closure = import_closure(stage_modules(cmd), root)
    deps = {next((d for d in DIR_DEPS if Path(d) in f.parents), str(f)) for f in closure}
    return sorted(deps, key=lambda d: (not d.startswith("stages/"), d))


def deps_diff(spec: dict, root: Path = ROOT) -> tuple[list[str], list[str]]:
    """(to add, to remove): closure files no dep covers, and code deps that cover no closure file."""
    closure = import_closure(stage_modules(spec["cmd"]), root)
    declared = code_deps(spec.get("deps", []))
    extra = [d for d in declared if not any(f == Path(d) or Path(d) in f.parents for f in closure)]
    return uncovered(closure, declared), extra


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_code_deps_are_its_import_closure(name):
    add, remove = deps_diff(stages()[name])
    assert not add and not remove, (
        f"dvc.yaml stage {name!r}: add to deps {add} (modules it runs), remove {remove} (code it never imports); "
        f"`python tests/test_dvc_deps.py` prints the correct lists")


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


def test_an_extra_or_a_missing_dep_is_named(tmp_path):
    """The check itself, on the closure above: a module the stage never imports is an extra dep, a
    module it imports and no dep covers a missing one; a directory dep counts as used through any file."""
    test_closure_follows_relative_lazy_and_package_imports(tmp_path)
    spec = {"cmd": "python -m stages.s", "deps": ["stages/s.py", "pipeline/a.py", "pipeline/b.py", "pipeline/c.py",
                                                   "pipeline/tasks", "pipeline/unused.py", "data/learn"]}
    assert deps_diff(spec, tmp_path) == ([], ["pipeline/unused.py"])
    spec["deps"] = [d for d in spec["deps"] if d not in ("pipeline/unused.py", "pipeline/c.py")]
    assert deps_diff(spec, tmp_path) == (["pipeline/c.py"], [])
    assert expected_code_deps(spec["cmd"], tmp_path) == ["stages/s.py", "pipeline/a.py", "pipeline/b.py",
                                                         "pipeline/c.py", "pipeline/tasks"]


if __name__ == "__main__":  # print the correct code deps of every stage (and what to change)
    for name, spec in stages().items():
        add, remove = deps_diff(spec)
        note = f"  # add {add}, remove {remove}" if add or remove else ""
        print(f"{name}:{note}")
        for d in expected_code_deps(spec["cmd"]):
            print(f"  - {d}")
