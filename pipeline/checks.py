"""`lwf check`: what DVC and the stages will do with a params file, done before anything runs.

One line per problem, each naming the params key: the typed validation (pipeline/config.py); every
key dvc.yaml interpolates or declares is present; the DVC dependencies `data.files` / `model.files`
exist and cover the local files; every task's files exist and hold the named fields and its prompt
template's placeholders resolve (each split loads as `prepare` will load it); rows fit
`data.max_length` (a forgetting prompt with `elicit.max_new_tokens` of answer, as the self-knowledge
rows will be); gold answers fit the generation lengths; splits are large enough.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .config import ConfigError, parse_config, read_params

# below these the run is not worth its time: a paired bootstrap over fewer test items gives intervals
# wider than any effect, and a fine-tune batch larger than the training split repeats rows in every step
MIN_TEST_ROWS = 20
OUTPUT_DIRS = ("data", "artifacts", "metrics", "logs", "reports")  # what the stages write (dvc.yaml outs)


def _get(raw: Any, dotted: str):
    node = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def declared_keys(dvc_yaml: dict, raw: dict) -> dict[str, str]:
    """Every params key dvc.yaml reads (interpolated `${a.b}` or listed under a stage's `params`),
    `${item...}` expanded over the run's methods where a key is built from one -> the first stage naming it."""
    out: dict[str, str] = {}
    methods = (raw.get("run") or {}).get("methods") or []

    def add(key: str, stage: str):
        if "${item" in key:
            if key.startswith("methods."):
                for m in methods:
                    out.setdefault(f"methods.{m}", stage)
            return
        out.setdefault(key, stage)

    for name, spec in (dvc_yaml.get("stages") or {}).items():
        text = str(spec)
        for key in re.findall(r"\$\{\s*([\w.]+)\s*\}", text):
            if not key.startswith("item"):
                add(key, name)
        body = spec.get("do", spec)
        for p in body.get("params") or []:
            if isinstance(p, str):
                add(p, name)
    return out


def _missing_keys(raw: dict, dvc_path: Path) -> list[str]:
    import yaml

    if not dvc_path.exists():
        return []
    spec = yaml.safe_load(dvc_path.read_text()) or {}
    problems = []
    for key, stage in declared_keys(spec, raw).items():
        try:
            _get(raw, key)
        except KeyError:
            problems.append(f"{key}: missing from params (dvc.yaml stage {stage} reads it); `lwf preset lab` or "
                            "`lwf init` writes a complete file to edit")
    return problems


def _under(path: Path, parent: Path) -> bool:
    path, parent = path.resolve(), parent.resolve()
    return path == parent or parent in path.parents


def _path_problems(cfg, root: Path) -> list[str]:
    out = []
    for key, value in (("data.files", cfg.data.files), ("model.files", cfg.model.files)):
        p = (root / value).expanduser()
        if not p.exists():
            out.append(f"{key} = {value!r}: does not exist (DVC needs every dependency)")
            continue
        inside = [d for d in OUTPUT_DIRS if _under(root / d, p)]
        if inside or p.resolve() == root.resolve():
            out.append(f"{key} = {value!r}: holds the pipeline's own outputs ({', '.join(inside) or 'the project'}); "
                       "put your files in a folder of their own")
    refs = [("data.learn", cfg.data.learn), *[(f"data.forget[{i}]", r) for i, r in enumerate(cfg.data.forget)],
            ("data.general", cfg.data.general)]
    for key, ref in refs:
        for split, f in ((ref.options or {}).get("data_files") or {}).items():
            if Path(f).expanduser().exists() and not _under(Path(f).expanduser(), root / cfg.data.files):
                out.append(f"{key}.options.data_files.{split} = {f!r}: not under data.files = {cfg.data.files!r}, "
                           "so DVC would not see it change; set data.files to a folder holding every data file")
    name = cfg.model.name
    if name != "lab" and Path(name).expanduser().is_dir() and not _under(Path(name).expanduser(), root / cfg.model.files):
        out.append(f"model.files = {cfg.model.files!r}: does not hold the local model model.name = {name!r}, so DVC "
                   "would not see it change; set model.files to the model's folder")
    return out


def check_tokenizer(cfg, root: Path):
    """The tokenizer the stages will use (None, with why, where it cannot be had without running a stage)."""
    from .models import PACKAGED, build_byte_tokenizer, prepare_tokenizer

    name = cfg.model.name
    if name == "lab":
        return build_byte_tokenizer(), None
    src = root / "artifacts/base_model" if name in PACKAGED else name
    if name in PACKAGED and not Path(src).exists():
        return None, f"token lengths not checked: {name} is converted by the base_model stage first"
    from transformers import AutoTokenizer

    try:
        tok = prepare_tokenizer(AutoTokenizer.from_pretrained(str(src)))
    except Exception as e:  # noqa: BLE001 - offline, no tokenizer files
        return None, f"model.name = {name!r}: no tokenizer could be loaded ({type(e).__name__}: {str(e)[:120]})"
    if cfg.model.chat_template:
        if not getattr(tok, "chat_template", None):
            raise ValueError(f"model.chat_template: true, but the tokenizer of {name} has no chat template")
        tok.lwf_chat = True
    return tok, None


def _n_tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"]) if text else 0


def _problem(key: str, e: Exception) -> str:
    msg = str(e).strip("'\"")
    m = re.match(r"(options\.[\w.]+)(.*)", msg, re.S)
    return f"{key}.{m.group(1)}{m.group(2)}" if m else f"{key}: {msg}"


def check_rows(cfg, tok) -> list[str]:
    """Each task's splits as prepare loads them: present, large enough, within the token budgets."""
    from .data import prompt_ids
    from .tasks import SPLITS, get_task, prepared_rows, prepared_sets

    out = []
    L, add_bos = cfg.data.max_length, cfg.model.add_bos
    for kind, ref, seed in prepared_sets(cfg.data):
        key = "data.learn" if kind == "learn" else "data.general" if kind == "general" else \
            f"data.forget[{[r.key for r in cfg.data.forget].index(ref.key)}]"
        try:
            task = get_task(ref.task, ref.options)
        except (ValueError, KeyError) as e:
            out.append(_problem(key, e))
            continue
        rows, failed = {}, {}
        for split in SPLITS:
            try:
                rows[split] = prepared_rows(ref, seed, split)
            except (ValueError, KeyError, FileNotFoundError) as e:
                failed.setdefault(_problem(key, e), []).append(split)
        out += [f"{msg} ({' and '.join(splits)} split{'s' * (len(splits) > 1)})" for msg, splits in failed.items()]
        if kind == "learn" and cfg.optimum.n_validation and task.has_validation and "train" in rows:
            try:  # the optimum stage's early stopping encodes these too
                rows["validation"] = task.load("validation", cfg.optimum.n_validation, cfg.data.seed + 1, ref.options)
            except (ValueError, KeyError, FileNotFoundError) as e:
                out.append(_problem(key, e) + " (validation split; or set optimum.n_validation: 0)")
        for split, rs in rows.items():
            if not rs:
                out.append(f"{key}: no {split} rows")
        if kind == "learn" and "test" in rows and 0 < len(rows["test"]) < MIN_TEST_ROWS:
            out.append(f"{key}.n_test: {len(rows['test'])} test rows; at least {MIN_TEST_ROWS} are needed for "
                       "intervals that can tell methods apart")
        if kind == "learn" and "train" in rows and 0 < len(rows["train"]) < cfg.finetune.batch_size:
            out.append(f"{key}.n_train: {len(rows['train'])} training rows, fewer than finetune.batch_size = "
                       f"{cfg.finetune.batch_size}")
        if kind == "forget" and "train" in rows and rows["train"] and \
                int(len(rows["train"]) * cfg.confidence.forget_fraction) < 1:
            out.append(f"{key}.n_train: {len(rows['train'])} rows x confidence.forget_fraction = "
                       f"{cfg.confidence.forget_fraction} selects none for unlearning")
        if tok is None:
            continue
        extra = 1  # the EOS every training row ends with
        for split, rs in rows.items():
            if kind == "forget" and split == "train":  # self-knowledge rows: prompt + up to max_new_tokens of answer
                lens = [len(prompt_ids(tok, r["prompt"], add_bos)) + cfg.elicit.max_new_tokens + extra for r in rs]
                what = f"prompt + elicit.max_new_tokens = {cfg.elicit.max_new_tokens} of answer"
            elif task.scoring == "loglik" and split == "test":
                lens = [len(prompt_ids(tok, r["prompt"], add_bos)) + max(_n_tokens(tok, " " + c) for c in r["choices"])
                        for r in rs]
                what = "prompt + longest option"
            else:
                lens = [len(prompt_ids(tok, r["prompt"], add_bos)) + _n_tokens(tok, r["target"]) + extra for r in rs]
                what = "prompt + target"
            over = [n for n in lens if n > L]
            if over:
                out.append(f"data.max_length = {L}: {len(over)} of {len(rs)} {key} {split} rows are longer "
                           f"({what}; longest {max(over)} tokens); raise data.max_length to at least {max(over)}")
        if task.has_gold and task.scoring == "generate":
            for split, budget, bkey in (("test", cfg.evaluate.max_new_tokens, "evaluate.max_new_tokens"),
                                        *((("train", cfg.elicit.max_new_tokens, "elicit.max_new_tokens"),)
                                          if kind == "forget" else ())):
                if kind == "general" or split not in rows:
                    continue
                gold = [_n_tokens(tok, r["target"]) for r in rows[split]]
                over = [n for n in gold if n > budget]
                if over:
                    out.append(f"{bkey} = {budget}: {len(over)} of {len(gold)} gold answers of {key} ({split}) are "
                               f"longer (longest {max(over)} tokens), so they cannot be generated whole; raise it "
                               f"to at least {max(over)}")
    return out


def problems(params: str | Path = "params.yaml", root: str | Path = ".") -> list[str]:
    """Every problem `dvc repro` would meet with this params file, one line each, naming the key."""
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    root = Path(root)
    try:
        raw = read_params(params)
    except ConfigError as e:
        return [str(e)]
    out = _missing_keys(raw if isinstance(raw, dict) else {}, root / "dvc.yaml")
    try:
        cfg = parse_config(raw)
    except ConfigError as e:
        return out + [str(e)]
    out += _path_problems(cfg, root)
    try:
        tok, why = check_tokenizer(cfg, root)
    except ValueError as e:
        return out + [str(e)]
    if why:
        out.append(why) if "no tokenizer" in why else None
    return out + check_rows(cfg, tok)
