"""`lwf init`: a complete params.yaml for your model and your JSONL files, derived from them.

Starts from the defaults (every key dvc.yaml reads, as `lwf preset lab` writes them) and sets what
depends on the model and the data: the three tasks as `custom` tasks in the files' own field names
(a missing test or validation split carved from the training file, general text from a test file
alone), `data.max_length` from the longest tokenized row (a forgetting prompt counted with its
elicited answer), the generation lengths from the longest gold answer, the chat template when the
tokenizer has one, the dtype and the trainable parameters that fit the machine's memory (every
parameter, else the top blocks), budgets sized from the training split (the optimum stage its own, not the lab's),
the graceful guard, no lab-only method or control, and `data.files` / `model.files` so that DVC
tracks the files. The file is written only when `lwf check` finds nothing wrong with it.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

from .config import ConfigError, DEFAULT_METHODS

PROMPT_FIELDS = ("prompt", "question", "query", "input", "instruction", "text")
TARGET_FIELDS = ("target", "answer", "reply", "response", "output", "completion", "label")
DEFAULT_METHODS_RUN = ["base", "vanilla", "vanilla_matched", "lwf", "lwf_low", "lwf_random"]
MARGIN = 2  # generation tokens beyond the longest gold answer (a tokenizer may split it differently in context)
MAX_VALIDATION = 200


def _files(spec: str) -> dict[str, str]:
    """`train.jsonl[,test.jsonl[,validation.jsonl]]` -> data_files."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not 1 <= len(parts) <= 3:
        raise ConfigError(f"{spec!r}: give TRAIN[,TEST[,VALIDATION]] files")
    for p in parts:
        if not Path(p).expanduser().is_file():
            raise ConfigError(f"data file {p!r} does not exist")
    return dict(zip(("train", "test", "validation"), parts))


def _first_record(path: str) -> dict:
    from .tasks.files import load_records

    recs = load_records({"data_files": {"x": path}}, "x")
    if not recs:
        raise ConfigError(f"data file {path!r} has no rows")
    return recs[0]


def _field(given: str | None, record: dict, candidates, what: str, option: str, path: str) -> str:
    if given:
        if given not in record:
            raise ConfigError(f"{option} {given!r}: {path} has no such field (fields: {', '.join(record)})")
        return given
    hit = next((c for c in candidates if c in record), None)
    if hit is None:
        raise ConfigError(f"{path}: which field is the {what}? none of {', '.join(candidates)} is there "
                          f"(fields: {', '.join(record)}); give {option}")
    return hit


def task_entry(spec: str, *, prompt=None, target=None, template=None, metric=None, choices=None, name=None,
               role: str, flag: str) -> dict:
    """The `custom` task entry of one data spec (a validation split carved for the learning task)."""
    files = _files(spec)
    if role == "general" and len(files) == 1:  # a test file alone: its guard rows are carved from it
        files = {"test": files["train"]}
    rec = _first_record(next(iter(files.values())))
    opts: dict = {"data_files": files}
    if role == "general":
        f = _field(prompt, rec, ("text", "body", "content", *PROMPT_FIELDS), "text", f"--{flag}-field", spec)
        opts.update(prompt_field=f, target_field=f, prompt_template="", metric="none")
    else:
        pf = _field(prompt, rec, PROMPT_FIELDS, "prompt", f"--{flag}-prompt", spec)
        tf = _field(target, rec, TARGET_FIELDS, "answer", f"--{flag}-target", spec)
        opts.update(prompt_field=pf, target_field=tf)
        if template:  # `\n` typed in a shell means a new line
            opts["prompt_template"] = template.replace("\\n", "\n").replace("\\t", "\t")
        if choices:
            opts["choices_field"] = choices
        elif metric:
            opts["metric"] = metric
        if role == "learn" and "validation" not in files:
            opts["carve"] = {"validation": 0.1}
    stem = Path(next(iter(files.values()))).stem
    opts["name"] = name or re.sub(r"[^\w.-]", "_", re.sub(r"[._-]?(train|test)$", "", stem) or stem)
    return {"task": "custom", "n_train": 1, "n_test": 1, "options": opts}


def _all_rows(entry: dict, split: str) -> list[dict]:
    from .tasks import get_task

    try:
        return get_task(entry["task"], entry["options"]).load(split, 10 ** 9, 0, entry["options"])
    except ValueError as e:
        raise ConfigError(f"{entry['options']['name']} ({split}): {e}") from None


def _tokenizer(model: str):
    from transformers import AutoTokenizer

    from .models import build_byte_tokenizer, prepare_tokenizer

    if model == "lab":
        return build_byte_tokenizer()
    try:
        return prepare_tokenizer(AutoTokenizer.from_pretrained(model))
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"--model {model!r}: no tokenizer could be loaded ({type(e).__name__}: {e})") from None


def _context_length(model: str) -> int | None:
    try:
        from transformers import AutoConfig

        c = AutoConfig.from_pretrained(model)
    except Exception:  # noqa: BLE001
        return None
    return next((getattr(c, k) for k in ("max_position_embeddings", "n_positions", "max_sequence_length")
                 if getattr(c, k, None)), None)


def machine_memory() -> tuple[str, int]:
    """('cuda', the GPU's memory) when a GPU is visible, else ('cpu', the machine's memory), in bytes."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.cuda.mem_get_info()[1]
    try:
        return "cpu", os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return "cpu", 8 * 2**30


def training_bytes(n_total: int, n_trainable: int, width: int) -> int:
    """Rough peak memory of a fine-tune: every weight, and per trainable weight its gradient, two AdamW
    moments, the guard's copy and the optimum stage's float64 snapshot (activations not counted: the
    budget below keeps 40% of the memory for them)."""
    return n_total * width + n_trainable * (4 * width + 8)


def fit_machine(model: str, budget_share: float = 0.6) -> tuple[dict, str]:
    """`model.dtype` and `model.trainable` that fit this machine: every parameter trained in float32
    when `training_bytes` fits `budget_share` of the memory, else (on a GPU that has it) in bfloat16,
    else the top k blocks with the largest k that fits (a regex over the parameter names). Returns
    the params and the line that says why."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    device, memory = machine_memory()
    dtypes = ["float32"] + (["bfloat16"] if device == "cuda" and torch.cuda.is_bf16_supported() else [])
    dtype, width = "float32", 4
    if model == "lab":
        return {"dtype": dtype}, f"model.dtype: {dtype} (the embedded lab model)"
    try:
        with torch.device("meta"):  # shapes only: no weights read, no memory taken
            net = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model))
    except Exception as e:  # noqa: BLE001
        return {"dtype": dtype}, f"model.dtype: {dtype}; model.trainable left as is (no config to size it: {e})"
    sizes = {n: p.numel() for n, p in net.named_parameters()}
    n_total, budget = sum(sizes.values()), budget_share * memory
    where = f"{device}, {memory / 2**30:.1f} GiB, {budget_share:.0%} of it for the fine-tune"
    for dtype in dtypes:  # float32 where it fits (AdamW on bfloat16 weights rounds small updates away)
        width = 2 if dtype == "bfloat16" else 4
        if training_bytes(n_total, n_total, width) <= budget:
            return {"dtype": dtype}, (f"model.dtype: {dtype}; model.trainable: every parameter ({n_total / 1e6:.2g}M, "
                                      f"~{training_bytes(n_total, n_total, width) / 2**30:.2g} GiB fits: {where})")
    blocks: dict[str, dict[int, int]] = {}  # the repeated blocks: 'model.layers.' -> index -> parameters
    for n, k in sizes.items():
        if m := re.match(r"^(.*?\.)(\d+)\.", n):
            blocks.setdefault(m.group(1), {}).setdefault(int(m.group(2)), 0)
            blocks[m.group(1)][int(m.group(2))] += k
    if not blocks:
        raise ConfigError(f"--model {model!r}: {n_total / 1e6:.0f}M parameters do not fit this machine ({where}) "
                          "and it has no numbered blocks to train a subset of")
    prefix, per = max(blocks.items(), key=lambda kv: len(kv[1]))
    order = sorted(per)
    for k in range(len(order), 0, -1):  # k = all: every block, the embeddings and the head frozen
        top = order[-k:]
        if training_bytes(n_total, sum(per[i] for i in top), width) <= budget:
            regex = re.escape(prefix) + "(" + "|".join(map(str, top)) + r")\."
            return {"dtype": dtype, "trainable": regex}, (
                f"model.trainable: {regex} (the top {k} of {len(order)} blocks, "
                f"{sum(per[i] for i in top) / 1e6:.1f}M of {n_total / 1e6:.1f}M parameters: every parameter would "
                f"need ~{training_bytes(n_total, n_total, width) / 2**30:.1f} GiB; {where}); model.dtype: {dtype}; "
                "model.prefix_cache: true would run the frozen blocks once per row (docs/speed.md)")
    raise ConfigError(f"--model {model!r}: not even its top block fits this machine ({where})")


def _rel(path: str | os.PathLike) -> str:
    p = Path(path).expanduser().resolve()
    try:
        return p.relative_to(Path.cwd().resolve()).as_posix() or "."
    except ValueError:
        return str(p)


def derive(model: str, learn: dict, forget: list[dict], general: dict, seeds: list[int], methods: list[str],
           steps: int | None = None, lr: float | None = None) -> tuple[dict, list[str]]:
    """The params differences from the defaults, and one line per derived setting saying why."""
    from .data import prompt_ids

    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    why = []
    tok = _tokenizer(model)
    chat = bool(getattr(tok, "chat_template", None))
    tok.lwf_chat = chat
    why.append(f"model.chat_template: {str(chat).lower()} (the tokenizer {'has' if chat else 'has no'} a chat template)")
    n_tok = lambda s: len(tok(s, add_special_tokens=False)["input_ids"]) if s else 0  # noqa: E731
    head = lambda r: len(prompt_ids(tok, r["prompt"], True))  # noqa: E731

    rows = {}
    for key, entry in (("learn", learn), *((f"forget{i}", e) for i, e in enumerate(forget)), ("general", general)):
        for split in ("train", "test"):
            rows[key, split] = _all_rows(entry, split)
        entry["n_train"], entry["n_test"] = len(rows[key, "train"]), len(rows[key, "test"])
    n_val = len(_all_rows(learn, "validation"))
    forget_gold = [r for i, e in enumerate(forget) if e["options"].get("metric", "exact") != "none"
                   for r in rows[f"forget{i}", "train"]]
    elicit_new = max([n_tok(r["target"]) for r in forget_gold] or [30]) + MARGIN
    elicit_new = max(elicit_new, 4)
    gold = [r for k in ("learn", *(f"forget{i}" for i, e in enumerate(forget) if e["options"].get("metric") != "none"))
            for r in rows[k, "test"]]
    eval_new = max(max([n_tok(r["target"]) for r in gold] or [8]) + MARGIN, 4)
    why.append(f"evaluate.max_new_tokens: {eval_new} (longest gold answer of a test split + {MARGIN}); "
               f"elicit.max_new_tokens: {elicit_new} (longest forgetting answer + {MARGIN}"
               f"{'; no gold: 30 + 2' if not forget_gold else ''})")
    lens = [head(r) + n_tok(r["target"]) + 1 for (k, _), rs in rows.items() for r in rs]
    lens += [head(r) + elicit_new + 1 for (k, s), rs in rows.items() if k.startswith("forget") for r in rs]
    lens += [head(r) + max(n_tok(" " + c) for c in r["choices"]) for rs in rows.values() for r in rs if "choices" in r]
    max_length = 8 * math.ceil(max(lens) / 8)
    ctx = _context_length(model)
    if ctx and max_length > ctx:
        raise ConfigError(f"the longest row needs {max(lens)} tokens, more than the model's context ({ctx}); "
                          "shorten the rows")
    why.append(f"data.max_length: {max_length} (longest row {max(lens)} tokens, a forgetting prompt counted with "
               f"elicit.max_new_tokens of answer; rounded up to a multiple of 8)")

    n_train = learn["n_train"]
    batch = min(16, n_train)
    epoch = math.ceil(n_train / batch)
    max_steps = steps or min(300, max(20, 3 * epoch))
    lr = lr or 3e-4
    opt_steps = 2 * max_steps
    why.append(f"finetune.max_steps: {max_steps} ({'--steps' if steps else f'3 epochs of {n_train} rows at batch {batch}'}); "
               f"optimum.steps: {opt_steps}, early-stopped on {min(n_val, MAX_VALIDATION)} validation rows carved from train")
    n_forget = sum(e["n_train"] for e in forget)
    fit, line = fit_machine(model)
    why.append(line)
    raw = {
        "run": {"seeds": seeds, "methods": methods},
        "model": {"name": model, "chat_template": chat, **fit,
                  "files": _rel(model) if Path(model).expanduser().is_dir() else "pipeline/models.py"},
        "data": {"learn": learn, "forget": forget, "general": general, "max_length": max_length,
                 "files": _rel(os.path.commonpath([str(Path(f).expanduser().resolve()) for e in (learn, *forget, general)
                                                  for f in e["options"]["data_files"].values()]))},
        "fisher": {"n_samples": min(96, n_train)},
        "elicit": {"max_new_tokens": elicit_new, "batch_size": 32},
        "optimum": {"steps": opt_steps, "lr": lr, "batch_size": batch, "warmup_steps": min(10, opt_steps // 10),
                    "n_validation": min(n_val, MAX_VALIDATION), "eval_every": max(1, opt_steps // 20)},
        "confidence": {"auroc_positive": [], "auroc_negative": [],
                       "probe": {"steps": 10, "lr": lr, "batch_size": batch, "seed": 0}},
        "unlearning": {"guard": "graceful", "unlearn_batch_size": max(1, min(16, int(n_forget * 0.25)))},
        "methods": DEFAULT_METHODS,
        "finetune": {"max_steps": max_steps, "batch_size": batch, "lr": lr, "warmup_steps": min(10, max_steps // 10)},
        "evaluate": {"max_new_tokens": eval_new, "batch_size": 32},
        "control": {"enabled": False},
    }
    why.append("unlearning.guard: graceful (undo and stop when a step raises the guard rows' perplexity by > 10%); "
               "confidence.auroc_*: [] and control.enabled: false (lab only)")
    return raw, why


def write_init(a) -> list[str]:
    """`lwf init` from parsed arguments: derive, check, write; returns the lines that say why."""
    from . import checks
    from .presets import full_params, render, write_atomic

    learn = task_entry(a.learn, prompt=a.learn_prompt, target=a.learn_target, template=a.learn_template,
                       metric=a.learn_metric, choices=a.learn_choices, name=a.learn_name, role="learn", flag="learn")
    forget = [task_entry(s, prompt=a.forget_prompt, target=a.forget_target, template=a.forget_template,
                         metric=a.forget_metric, choices=a.forget_choices, role="forget", flag="forget")
              for s in a.forget]
    general = task_entry(a.general, prompt=a.general_field, role="general", flag="general")
    seeds = [int(s) for s in a.seeds.split(",")]
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    raw, why = derive(a.model, learn, forget, general, seeds, methods, a.steps, a.lr)
    cfg, full = full_params(raw)
    text = render(full, "# params.yaml, written by `lwf init` from your model and data files (pipeline/init.py says\n"
                        "# how each setting is derived). Every key the pipeline reads; edit it, then `lwf check`.\n")
    tmp = Path(a.params).with_name(f".{Path(a.params).name}.init")
    tmp.write_text(text)
    try:
        found = checks.problems(tmp, ".")
    finally:
        tmp.unlink()
    if found:
        raise ConfigError("the derived params do not pass `lwf check`:\n  " + "\n  ".join(found))
    write_atomic(a.params, text)
    return why


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="a local save_pretrained folder, a hub id, or lab")
    p.add_argument("--learn", required=True, metavar="TRAIN[,TEST[,VAL]]",
                   help="the learning task's files (json/jsonl/csv/parquet); a missing test split is carved from TRAIN")
    p.add_argument("--forget", required=True, action="append", metavar="TRAIN[,TEST]",
                   help="a forgetting task's files (repeat for several); its name in the report is the file's stem")
    p.add_argument("--general", required=True, metavar="[TRAIN,]TEST",
                   help="general text (its perplexity): a test file alone is fine (guard rows are carved from it)")
    for role in ("learn", "forget"):
        p.add_argument(f"--{role}-prompt", help=f"the prompt field (default: the first of {', '.join(PROMPT_FIELDS)})")
        p.add_argument(f"--{role}-target", help=f"the answer field (default: the first of {', '.join(TARGET_FIELDS)})")
        p.add_argument(f"--{role}-template", help="prompt template over the fields, e.g. 'Q: {question}\\nA:'")
        p.add_argument(f"--{role}-metric", choices=("exact", "contains", "number", "none"), help="default exact")
        p.add_argument(f"--{role}-choices", help="a field holding a list of options: multiple choice")
    p.add_argument("--learn-name", help="the learning task's name in the report (default: the file's stem)")
    p.add_argument("--general-field", help="the text field (default: the first of text, body, content, ...)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated (default 0,1,2)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS_RUN), help="comma-separated entries of `methods`")
    p.add_argument("--steps", type=int, help="finetune.max_steps (default: 3 epochs of the training split)")
    p.add_argument("--lr", type=float, help="finetune, optimum and probe learning rate (default 3e-4)")
    p.add_argument("--params", default="params.yaml", help="the file to write (default params.yaml)")
