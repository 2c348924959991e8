"""Loading task rows from local files (json/jsonl/csv/parquet), the Hugging Face Hub, or the
subsets vendored in this package, with the real `datasets.load_dataset` path every way.

Where a split's rows come from, first match wins: the user's file `options.data_files.<split>`;
with `options.source: vendored`, the vendored copy `vendored/<hub id>/<config or "default">/
<hub split>.jsonl` (the hub's own fields, so the same task code reads it; see each dataset's
PROVENANCE.md); else (`source: hub`, the default) the hub dataset through `load_dataset`.
`options.<split>_slice: [start, stop]` keeps those records only (before the seeded draw): two
task references then draw disjoint rows from one split (e.g. the learning rows and the
forgetting task's prompts from SST-5's train split).
"""
from __future__ import annotations

import random
from pathlib import Path

_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
VENDORED = Path(__file__).resolve().parent / "vendored"
SOURCES = ("hub", "vendored")


def vendored_file(hub_id: str, config: str | None, split: str) -> Path:
    """The vendored copy of one split of a hub dataset (it may not exist)."""
    return VENDORED / hub_id / (config or "default") / f"{split}.jsonl"


def vendored_datasets() -> list[str]:
    """Hub ids with a vendored copy, e.g. 'openai/gsm8k'."""
    return sorted(str(p.relative_to(VENDORED)) for p in VENDORED.glob("*/*") if p.is_dir())


def load_records(options: dict, split: str, hub_id: str | None = None, hub_config: str | None = None,
                 required: tuple[str, ...] = (), hub_split: str | None = None) -> list[dict]:
    """Records of `split`: `options['data_files'][split]` (a local file), else the vendored copy
    (`options['source'] == 'vendored'`) or the hub dataset `options.get('hub_id', hub_id)`.
    Raises ValueError naming a missing field or file."""
    from datasets import load_dataset

    source = options.get("source", "hub")
    if source not in SOURCES:
        raise ValueError(f"options.source {source!r} must be one of {', '.join(SOURCES)}")
    files = options.get("data_files") or {}
    hub = options.get("hub_id", hub_id)
    name = options.get("hub_config", hub_config)
    hub_split = options.get(f"{split}_split", hub_split or split)
    if split in files:
        path = Path(files[split]).expanduser()
    elif not hub:
        raise ValueError(f"no data file for split {split!r} (options.data_files.{split}) and no hub id")
    elif source == "vendored":
        path = vendored_file(hub, name, hub_split)
        if not path.exists():
            raise ValueError(f"no vendored copy of {hub!r} ({name or 'default'}, split {hub_split!r}); vendored: "
                             f"{', '.join(vendored_datasets())} (or give options.data_files.{split})")
    else:
        path = None
    if path is not None:
        if not path.exists():
            raise ValueError(f"data file {str(path)!r} for split {split!r} does not exist")
        builder = _BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"data file {str(path)!r}: unsupported extension (use {', '.join(_BUILDERS)})")
        if path.stat().st_size == 0:
            raise ValueError(f"data file {str(path)!r} for split {split!r} is empty")
        try:
            ds = load_dataset(builder, data_files={split: str(path)}, split=split)
        except Exception as e:  # a user's file that datasets cannot parse
            raise ValueError(f"could not read {str(path)!r}: {type(e).__name__}: {e}") from None
    else:
        try:
            ds = load_dataset(hub, name, split=hub_split)
        except Exception as e:  # offline, unknown id, no such split
            vendored = " or options.source: vendored" if vendored_file(hub, name, hub_split).exists() else ""
            raise ValueError(f"could not load {hub!r} ({name or 'default'}, split {hub_split!r}) with datasets: "
                             f"{type(e).__name__}: {e}. Give local files in options.data_files.{split}"
                             f"{vendored}") from None
    missing = [f for f in required if f not in ds.column_names]
    if missing:
        raise ValueError(f"dataset for split {split!r} lacks required field {missing[0]!r} (has: {ds.column_names})")
    cut = options.get(f"{split}_slice")
    if cut is not None:
        if not (isinstance(cut, (list, tuple)) and len(cut) == 2 and all(isinstance(i, int) and i >= 0 for i in cut)
                and cut[0] < cut[1] <= len(ds)):
            raise ValueError(f"options.{split}_slice {cut!r} must be [start, stop] with 0 <= start < stop <= "
                             f"{len(ds)} (the split's records)")
        ds = ds.select(range(*cut))
    return ds.to_list()


def sample(records: list, n: int, seed: int) -> list:
    """n records, seeded; all of them (in a seeded order) when fewer exist."""
    idx = list(range(len(records)))
    random.Random(seed).shuffle(idx)
    return [records[i] for i in idx[:n]]
