"""Loading task rows from local files (json/jsonl/csv/parquet) or the Hugging Face Hub, with the
real `datasets.load_dataset` path either way."""
from __future__ import annotations

import random
from pathlib import Path

_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def load_records(options: dict, split: str, hub_id: str | None = None, hub_config: str | None = None,
                 required: tuple[str, ...] = (), hub_split: str | None = None) -> list[dict]:
    """Records of `split` from `options['data_files'][split]` (a local file) or else the hub
    dataset `options.get('hub_id', hub_id)`. Raises ValueError naming a missing field or file."""
    from datasets import load_dataset

    files = options.get("data_files") or {}
    if split in files:
        path = Path(files[split]).expanduser()
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
        hub = options.get("hub_id", hub_id)
        if not hub:
            raise ValueError(f"no data file for split {split!r} (options.data_files.{split}) and no hub id")
        name = options.get("hub_config", hub_config)
        hub_split = options.get(f"{split}_split", hub_split or split)
        try:
            ds = load_dataset(hub, name, split=hub_split)
        except Exception as e:  # offline, unknown id, no such split
            raise ValueError(f"could not load {hub!r} ({name or 'default'}, split {hub_split!r}) with datasets: "
                             f"{type(e).__name__}: {e}. Give local files in options.data_files.{split}") from None
    missing = [f for f in required if f not in ds.column_names]
    if missing:
        raise ValueError(f"dataset for split {split!r} lacks required field {missing[0]!r} (has: {ds.column_names})")
    return ds.to_list()


def sample(records: list, n: int, seed: int) -> list:
    """n records, seeded; all of them (in a seeded order) when fewer exist."""
    idx = list(range(len(records)))
    random.Random(seed).shuffle(idx)
    return [records[i] for i in idx[:n]]
