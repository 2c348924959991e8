"""One-way layering: `stages/` are thin entry points over the `pipeline/` library; the library
never imports a stage and no stage imports another (a reader finds each step in one file)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            out.add("." * node.level + (node.module or ""))
    return out


def test_pipeline_never_imports_stages():
    bad = {(p.name, m) for p in (ROOT / "pipeline").rglob("*.py") for m in imports(p) if m.split(".")[0] == "stages"}
    assert not bad


def test_no_stage_imports_another_stage():
    bad = {(p.name, m) for p in (ROOT / "stages").glob("*.py") for m in imports(p)
           if m.startswith(".") or m.split(".")[0] == "stages"}
    assert not bad
