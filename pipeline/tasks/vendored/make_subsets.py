"""Rebuild the vendored subsets from full offline copies of the datasets (the layout of the
project's shared data folder: sst5/<split>.jsonl, gsm8k/<split>.jsonl, mmlu/<subject>/<split>.jsonl).

    python pipeline/tasks/vendored/make_subsets.py DATA_DIR    # a folder laid out as above

Each output file is `vendored/<hub id>/<config or "default">/<split>.jsonl`: the source lines at
`sorted(random.Random(0).sample(range(n_lines), k))`, copied byte for byte (so in source order),
or the whole file where no size is given. Running it again gives the same bytes.
"""
from __future__ import annotations

import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 0
# (hub id, config, split) -> (source file under the shared data folder, rows to keep; None = all)
SUBSETS = {
    ("SetFit/sst5", None, "train"): ("sst5/train.jsonl", 2000),
    ("SetFit/sst5", None, "validation"): ("sst5/validation.jsonl", 300),
    ("SetFit/sst5", None, "test"): ("sst5/test.jsonl", 500),
    ("openai/gsm8k", "main", "train"): ("gsm8k/train.jsonl", 1000),
    ("openai/gsm8k", "main", "test"): ("gsm8k/test.jsonl", 300),
    **{("cais/mmlu", sub, split): (f"mmlu/{sub}/{split}.jsonl", None)
       for sub in ("high_school_psychology", "professional_psychology") for split in ("test", "validation", "dev")},
}


def subset_lines(lines: list[str], k: int | None) -> list[str]:
    """`k` of `lines` drawn with seed SEED, kept in source order (all of them when k is None)."""
    if k is None:
        return lines
    return [lines[i] for i in sorted(random.Random(SEED).sample(range(len(lines)), k))]


def source_lines(path: Path) -> list[str]:
    """The file's lines, each with its own ending, split at "\\n" only (no newline translation: a
    "\\r\\n" stays, a lone "\\r" or a U+2028 inside a JSON string does not end a line)."""
    return re.findall(r"[^\n]*\n|[^\n]+$", path.read_bytes().decode("utf-8"))


def build(shared: Path) -> dict[Path, str]:
    """Vendored file path (relative to this folder) -> content."""
    out = {}
    for (hub_id, config, split), (src, k) in SUBSETS.items():
        out[Path(hub_id) / (config or "default") / f"{split}.jsonl"] = "".join(subset_lines(source_lines(shared / src), k))
    return out


if __name__ == "__main__":
    for rel, text in build(Path(sys.argv[1])).items():
        (HERE / rel).parent.mkdir(parents=True, exist_ok=True)
        with open(HERE / rel, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        print(f"{rel}: {text.count(chr(10))} rows")
