"""Tables of measured figures in README.md, docs/*.md and experiments/*/README.md, rendered from the result
files that hold them, so that no figure is typed by hand.

A rendered block sits between two markers; everything between them is rewritten from the source:

    <!-- rendered: table docs/results/lab_default/report.md n=1 rows=vanilla,lwf cols=1,2,3 -->
    ...
    <!-- /rendered -->

Views: `table SOURCE [n=N[,M]] [rows=a,b] [cols=1,3] [header=a,b]` copies the N-th markdown table of SOURCE
(1-based; further tables' rows appended; rows by their first cell, in the source's order; columns by 1-based
index; `header` for a printout of bare rows); `headline FOLDER...` is one row per result
folder (a `report` stage's summary.json and report.md); `auroc_by_lab FOLDER...` is one row per lab seed of
experiments/published_confidence (its summary.md). Paths are relative to the repository root.

`python -m pipeline.docs_render` rewrites every block; `--check` only lists the pages whose blocks differ
(exit 1), as tests/test_docs.py does.
"""
from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

BLOCK = re.compile(r"(<!-- rendered: ([^\n]+?) -->\n)(.*?)(<!-- /rendered -->)", re.S)
# forgetting methods whose delta the headline compares (the base model, vanilla recipes and control are not)
NOT_FORGETTING = {"base", "vanilla", "vanilla_matched", "control"}


def pages(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md")), *sorted((root / "experiments").rglob("README.md"))]


def markdown_tables(text: str) -> list[list[str]]:
    """Every markdown table of a text, as its lines (header, rule, rows)."""
    tables, cur = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cur.append(line.rstrip())
        elif cur:
            tables.append(cur)
            cur = []
    return tables


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _table(root: Path, source: str, n: str = "1", rows: str = "", cols: str = "", header: str = "") -> str:
    tables = markdown_tables((root / source).read_text())
    picked = [int(k) for k in n.split(",")]
    if not all(1 <= k <= len(tables) for k in picked):
        raise ValueError(f"{source} has {len(tables)} tables, not a table {n}")
    if header:  # the source's tables are bare rows (a script's printout): this header goes above them
        head = ["| " + " | ".join(header.split(",")) + " |", "|" + "---|" * len(header.split(","))]
        lines = head + [ln for k in picked for ln in tables[k - 1]]
    else:
        lines = tables[picked[0] - 1] + [ln for k in picked[1:] for ln in tables[k - 1][2:]]
    if rows:
        keep = rows.split(",")
        missing = set(keep) - {cells(ln)[0] for ln in lines[2:]}
        if missing:
            raise ValueError(f"{source}, table {n}: no rows {sorted(missing)}")
        lines = lines[:2] + [ln for ln in lines[2:] if cells(ln)[0] in keep]
    if cols:
        idx = [int(c) - 1 for c in cols.split(",")]
        lines = ["| " + " | ".join(cells(ln)[i] for i in idx) + " |" for ln in lines]
    return "\n".join(lines)


def _ci(delta: float, ci, digits: int = 3) -> str:
    return f"{delta:+.{digits}f} [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def headline_row(root: Path, folder: str) -> str:
    """One headline row from a result folder: its tasks (report.md's scoring line), lwf − vanilla and the best
    forgetting method − vanilla on the learning task, lwf's perplexity change, and how many seeds agree."""
    summary = json.loads((root / folder / "summary.json").read_text())
    scoring = next(ln for ln in (root / folder / "report.md").read_text().splitlines() if ln.startswith("Scoring:"))
    learned = ", ".join(re.findall(r"learn/(\w+)", scoring))
    forgotten = ", ".join(re.findall(r"forget/(\w+)", scoring))
    van, lwf = summary["vanilla"], summary["lwf"]
    forgetting = [m for m in summary if m not in NOT_FORGETTING]
    best = max(forgetting, key=lambda m: summary[m]["learn_score_delta"])
    ppl = f"{_ci(lwf['perplexity_delta'], lwf['perplexity_delta_ci95'])} ({100 * lwf['perplexity_delta'] / van['perplexity']:+.1f}%)"
    pairs = list(zip(lwf["learn_score_seeds"], van["learn_score_seeds"]))
    below, above = sum(a < b for a, b in pairs), sum(a > b for a, b in pairs)
    runs = lwf.get("pretrainings", 1)
    agree = f"{runs} run{'s' * (runs > 1)} of {len(pairs)} seeds: lwf below vanilla in {below}, above in {above}"
    report = f"{folder}/report.md"
    return " | ".join(["", f"[{Path(folder).name}]({report})", learned, forgotten,
                       _ci(lwf["learn_score_delta"], lwf["learn_score_delta_ci95"]),
                       f"{best} {_ci(summary[best]['learn_score_delta'], summary[best]['learn_score_delta_ci95'])}",
                       ppl, agree, ""]).strip()


def _headline(root: Path, *folders: str) -> str:
    header = ["setting (its report)", "learned", "forgotten", "lwf − vanilla [95% CI]",
              "best forgetting method − vanilla [95% CI]", "perplexity change, lwf", "runs that agree"]
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *(headline_row(root, f) for f in folders)])


# (column title, score, fisher.at, alpha) of experiments/published_confidence's summary tables, per lab seed
AUROC_COLUMNS = [("cosine (default)", "cosine", "-", "-"), ("optimum_distance (base, 1)", "optimum_distance", "base", "1.0"),
                 ("optimum_distance (heldout, 1e-6)", "optimum_distance", "heldout", "1e-06"),
                 ("former default (target, 3e-4, 120 steps)", "optimum_distance_shipped", "-", "-"),
                 ("loss_rise", "loss_rise", "-", "-"), ("fisher_distance", "fisher_distance", "-", "-")]


def _auroc_by_lab(root: Path, *folders: str) -> str:
    """One row per lab seed's `published_confidence.py --out` folder (summary.md): AUROC over all samples /
    on the test half / conflicting share of D_U per score, and a last row of mean ± sd of the first."""
    import statistics

    header = ["lab seed", "theta*_L kept step (of run)", *(c[0] for c in AUROC_COLUMNS)]
    lines, alls = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)], []
    for folder in folders:
        text = (root / folder / "summary.md").read_text()
        kept, run = re.search(r"best step (\d+) \(of (\d+) run", text).groups()
        rows = {tuple(cells(ln)[:3]): cells(ln) for ln in markdown_tables(text)[0][2:]}
        picked = [rows[c[1:]] for c in AUROC_COLUMNS]
        alls.append([float(r[5]) for r in picked])
        row = [Path(folder).name.removeprefix("lab"), f"{kept} ({run})",
               *(f"{r[5]} / {r[4].split()[0]} / {float(r[6]):.2f}" for r in picked)]
        lines.append("| " + " | ".join(row) + " |")
    stats = [f"{statistics.mean(col):.3f} ± {statistics.stdev(col):.3f}" for col in zip(*alls)]
    lines.append("| " + " | ".join([f"mean ± sd over {len(folders)} (all)", "", *stats]) + " |")
    return "\n".join(lines)


VIEWS = {"table": _table, "headline": _headline, "auroc_by_lab": _auroc_by_lab}


def render_block(spec: str, root: Path) -> str:
    view, *words = shlex.split(spec)
    args = [w for w in words if "=" not in w]
    opts = dict(w.split("=", 1) for w in words if "=" in w)
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r} in <!-- rendered: {spec} -->; the views are {sorted(VIEWS)}")
    return VIEWS[view](root, *args, **opts) + "\n"


def render_text(text: str, root: Path) -> str:
    return BLOCK.sub(lambda m: m.group(1) + render_block(m.group(2), root) + m.group(4), text)


def sources(text: str) -> list[str]:
    """The source paths the blocks of a page name."""
    return [w for m in BLOCK.finditer(text) for w in shlex.split(m.group(2))[1:] if "=" not in w]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path.cwd()
    stale = []
    for page in pages(root):
        text = page.read_text()
        new = render_text(text, root)
        if new != text:
            stale.append(str(page.relative_to(root)))
            if "--check" not in argv:
                page.write_text(new)
    verb = "differ from their sources" if "--check" in argv else "rewritten"
    print(f"{verb}: {', '.join(stale)}" if stale else "every rendered block is up to date")
    return 1 if stale and "--check" in argv else 0


if __name__ == "__main__":
    sys.exit(main())
