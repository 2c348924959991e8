"""Stage 5: scores of one fine-tuned model.

- learning task: held-out test split, greedy generation (cut at the task's stop strings), the
  task's extraction and metric (given each row's option texts, when it has them);
- each forgetting task: its held-out test split (expected to drop: forgetting happened);
- general text: perplexity exp(sum NLL / number of tokens) on held-out text (graceful, no collapse);
- the mechanism: mean NLL l(s) of named sets of self-generated samples (`nll_sets`): lwf's D_U
  (`d_u_nll`: was it unlearned, relative to vanilla?), the method's own D_U, and each forgetting
  task's whole self-knowledge. These are the forgetting-task *training* prompts with the base
  model's answers: a check that unlearning happened, not a held-out score.
Per-item scores are kept so the report can run paired bootstraps, and with them (`generations`) what
each learning- and forgetting-task score came from: prompt, gold answer, generation or chosen option.
"""
from __future__ import annotations

import math

import torch

from . import dist
from .data import (IGNORE, Encoded, _accepts_logits_to_keep, batches, collate, encode_rows, progress_bar, sequence_nlls,
                   token_nll)
from .generation import generate
from .tasks import get_task


def task_scores(model, tok, task, rows: list[dict], max_new_tokens: int, batch_size: int,
                add_bos: bool = True, keep: list | None = None, desc: str | None = None
                ) -> tuple[list[float], dict[str, float]]:
    """Per-item main score of `task` (a Task or a registered name) and the means of its extra scores.
    `keep`: a list that gets, per row in order, what the score was computed from (`kept_row`).
    `desc`: show a progress bar so named."""
    task = get_task(task) if isinstance(task, str) else task
    if task.scoring == "loglik":
        return choice_scores(model, tok, task, rows, batch_size, add_bos, keep, desc), {}
    gens = generate(model, tok, [r["prompt"] for r in rows], max_new_tokens=max_new_tokens,
                    batch_size=batch_size, add_bos=add_bos, progress=desc is not None, stop=task.stop,
                    desc=desc or "generate")
    items = [task.score(g["response"], r["answer"], r.get("choices")) for g, r in zip(gens, rows)]
    if keep is not None:
        keep += [kept_row(task, i, r, g["response"], s) for i, (g, r, s) in enumerate(zip(gens, rows, items))]
    extras: dict[str, list[float]] = {}
    for g, r in zip(gens, rows):
        for k, v in task.extra_scores(g["response"], r["answer"]).items():
            extras.setdefault(k, []).append(v)
    return items, {k: sum(v) / len(v) for k, v in extras.items()}


def choice_scores(model, tok, task, rows: list[dict], batch_size: int, add_bos: bool = True,
                  keep: list | None = None, desc: str | None = None) -> list[float]:
    """lm-evaluation-harness multiple choice: 1.0 when the option continuation with the highest
    total log-likelihood after the prompt is the gold one (the first of equal ones, as lm-eval's
    argmax). `keep`: as in `task_scores`, the generation being the chosen option's continuation."""
    lls = choice_logliks(model, tok, task, rows, batch_size, add_bos, desc)
    best = [max(range(len(ll)), key=ll.__getitem__) for ll in lls]
    items = [float(b == task.gold_index(r)) for b, r in zip(best, rows)]
    if keep is not None:
        keep += [kept_row(task, i, r, task.choice_continuations(r)[b].strip(), s, chosen=b)
                 for i, (r, b, s) in enumerate(zip(rows, best, items))]
    return items


def kept_row(task, i: int, row: dict, generation: str, score: float, chosen: int | None = None) -> dict:
    """One scored test row as the evaluate stage saves it (artifacts/eval/<method>.generations.parquet):
    `generation` is the model's output cut at the task's stop strings (`generate`) or the text of the
    option it ranked first (`loglik`, its index in `chosen`); `task.score(generation, answer, choices)`
    gives `score` again."""
    return {"task": task.name, "scoring": task.scoring, "row": i, "prompt": row["prompt"],
            "answer": str(row["answer"]), "choices": list(row["choices"]) if row.get("choices") else None,
            "generation": generation, "chosen": chosen, "score": float(score)}


def option_carriers(encs: list[Encoded]) -> dict[int, int]:
    """For one row's encoded option continuations: which sequence to run for each option (option ->
    its carrier). An option rides on a longer sequence whose first tokens equal its own sequence
    minus the last token: under causal attention the logits that predict its tokens are the same
    there (SST-5's five labels need one forward: "negative" and "very negative" both ride on
    prompt + " very negative"). Carriers are the longest sequences first."""
    order = sorted(range(len(encs)), key=lambda j: -len(encs[j].input_ids))
    carrier: dict[int, int] = {}
    runs: list[int] = []
    for j in order:
        ids = encs[j].input_ids
        head = ids[:-1]
        carrier[j] = next((c for c in runs if encs[c].input_ids[:len(head)] == head), j)
        if carrier[j] == j:
            runs.append(j)
    return carrier


@torch.no_grad()
def choice_logliks(model, tok, task, rows: list[dict], batch_size: int, add_bos: bool = True,
                   desc: str | None = None) -> list[list[float]]:
    """Per row, the total log-likelihood of each of its option continuations after the prompt.
    One forward per carrier sequence (`option_carriers`), logits only at the positions that predict
    an option token (`logits_to_keep`, where the model takes it). `desc`: a progress bar over the
    sequences run, so named."""
    model.eval()
    device = next(model.parameters()).device
    runs = []  # (carrier Encoded, [(row, option, target positions, target tokens)])
    for i, r in enumerate(rows):
        encs = encode_rows(tok, [{"prompt": r["prompt"], "target": c, "add_eos": False}
                                 for c in task.choice_continuations(r)], 10**9, add_bos)
        carrier = option_carriers(encs)
        for c in sorted(set(carrier.values())):
            riders = []
            for j in sorted(k for k, v in carrier.items() if v == c):
                t = [q for q, lab in enumerate(encs[j].labels) if lab != IGNORE]
                riders.append((i, j, [q - 1 for q in t], [encs[j].input_ids[q] for q in t]))
            runs.append((encs[c], riders))
    runs.sort(key=lambda run: len(run[0].input_ids))  # similar lengths together: less padding
    keeps = _accepts_logits_to_keep(model)
    local = []
    mine = dist.shard_even(runs)[0]
    bar = progress_bar(len(mine), desc)
    for chunk in batches(mine, batch_size):
        batch = collate([run[0] for run in chunk], tok.pad_token_id, device)
        need = [sorted({p for rider in run[1] for p in rider[2]}) for run in chunk]
        k = max(len(n) for n in need)
        pos = torch.tensor([n + [n[0]] * (k - len(n)) for n in need], device=device)
        kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        if keeps:
            logits = model(**kw, logits_to_keep=pos).logits
        else:
            logits = model(**kw).logits
            logits = logits.gather(1, pos[..., None].expand(-1, -1, logits.shape[-1]))
        logp = logits.float().log_softmax(-1)
        for b, (run, n) in enumerate(zip(chunk, need)):
            at = {p: q for q, p in enumerate(n)}
            local.append([(i, j, float(sum(logp[b, at[p], t] for p, t in zip(ps, ts)))) for i, j, ps, ts in run[1]])
        bar.update(len(chunk))
    bar.close()
    gathered = dist.gather_sharded(local, len(runs))
    out: list[list[float]] = [[0.0] * len(task.choice_continuations(r)) for r in rows]
    for part in gathered:
        for i, j, v in part:
            out[i][j] = v
    return out


@torch.no_grad()
def perplexity(model, tok, rows: list[dict], max_length: int, batch_size: int,
               add_bos: bool = True, desc: str | None = None) -> tuple[float, list[float], list[int]]:
    """exp(sum NLL / number of tokens) over `rows`, and per sequence its summed NLL and token count
    (the report bootstraps perplexity over sequences), in the order of `rows`. Batches hold rows
    of similar lengths (less padding: half the time on GSM8K questions at batch 32)."""
    model.eval()
    device = next(model.parameters()).device
    encs = encode_rows(tok, rows, max_length, add_bos)
    local, _ = dist.shard_even(encs)
    order = sorted(range(len(local)), key=lambda i: len(local[i].input_ids))
    sums, counts = [0.0] * len(local), [0] * len(local)
    with progress_bar(len(local), desc) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = collate([local[i] for i in idx], tok.pad_token_id, device)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            nll, mask = token_nll(logits, batch["labels"])
            for i, v, n in zip(idx, nll.double().sum(1).tolist(), mask.sum(1).tolist()):
                sums[i], counts[i] = v, n
            bar.update(len(idx))
    sums, counts = dist.gather_sharded(sums, len(encs)), dist.gather_sharded(counts, len(encs))
    return math.exp(sum(sums) / max(sum(counts), 1)), sums, counts


def set_nlls(model, tok, rows: list[dict], max_length: int, batch_size: int, add_bos: bool = True,
             desc: str | None = None) -> list[float]:
    """Per-sample l(s) of `rows` under `model` (several processes: a shard each, gathered)."""
    encs = encode_rows(tok, rows, max_length, add_bos)
    local, _ = dist.shard_even(encs)
    return dist.gather_sharded(sequence_nlls(model, local, tok.pad_token_id, batch_size, desc).tolist(), len(encs))


def evaluate_model(model, tok, data_cfg, learn_test: list[dict], forget_tests: dict[str, list[dict]],
                   general_test: list[dict], cfg, add_bos: bool = True,
                   nll_sets: dict[str, list[dict]] | None = None, generations: list | None = None) -> dict:
    """Scores of one model; `data_cfg` (params `data`) says which task each split belongs to.
    `nll_sets`: name -> rows whose mean NLL is reported under `nll` (and `d_u_nll` for "d_u").
    `generations`: a list that gets one `kept_row` per scored test row, with `split` (`learn`,
    `forget/<key>`: the key of `items` holding its score)."""
    kept: dict[str, list] = {}

    def keeper(split: str) -> list | None:
        return None if generations is None else kept.setdefault(split, [])

    learn_task = get_task(data_cfg.learn.task, data_cfg.learn.options)
    learn_items, learn_extra = task_scores(model, tok, learn_task, learn_test, cfg.max_new_tokens, cfg.batch_size,
                                           add_bos, keeper("learn"), desc=f"evaluate learn/{learn_task.name}")
    forget_items = {}
    scoring = {f"learn/{learn_task.name}": learn_task.scoring}
    for ref in data_cfg.forget:
        task = get_task(ref.task, ref.options)
        if task.has_gold:
            scoring[f"forget/{ref.key}"] = task.scoring
            forget_items[ref.key] = task_scores(model, tok, task, forget_tests[ref.key], cfg.max_new_tokens,
                                                 cfg.batch_size, add_bos, keeper(f"forget/{ref.key}"),
                                                 desc=f"evaluate forget/{ref.key}")[0]
    for split, rows in kept.items():
        generations += [{"split": split, **r} for r in rows]
    max_length = data_cfg.max_length
    ppl, seq_nll, seq_tokens = perplexity(model, tok, general_test, max_length, cfg.batch_size, add_bos,
                                          desc="evaluate general")
    out = {
        "learn_score": sum(learn_items) / len(learn_items),
        "learn_extra": learn_extra,
        "forget_score": (sum(sum(v) / len(v) for v in forget_items.values()) / len(forget_items)) if forget_items else None,
        "forget_scores": {k: sum(v) / len(v) for k, v in forget_items.items()},
        "perplexity": ppl,
        "scoring": {**scoring, f"general/{data_cfg.general.task}": "perplexity"},
        "items": {"learn": learn_items, **{f"forget/{k}": v for k, v in forget_items.items()},
                  "general/nll": seq_nll, "general/tokens": seq_tokens},
    }
    if nll_sets:  # each distinct sample scored once (D_U sets are subsets of the self-knowledge sets)
        key = lambda r: (r["prompt"], r["target"], r.get("add_eos", True))  # noqa: E731
        unique = list({key(r): r for rows in nll_sets.values() for r in rows}.values())
        nll_of = dict(zip(map(key, unique), set_nlls(model, tok, unique, max_length, cfg.batch_size, add_bos,
                                                     desc="evaluate NLL sets")))
        out["nll"] = {}
        for name, rows in nll_sets.items():
            if rows:
                items = [nll_of[key(r)] for r in rows]
                out["nll"][name] = sum(items) / len(items)
                out["items"][f"nll/{name}"] = items
        out["d_u_nll"] = out["nll"].get("d_u")
    return out


GENERATION_COLUMNS = ["method", "seed", "split", "task", "scoring", "row", "prompt", "answer", "choices",
                      "generation", "chosen", "score"]


def generations_table(rows: list[dict]):
    """The evaluate stage's kept rows (`kept_row` with `method`, `seed`, `split`) as a DataFrame in
    GENERATION_COLUMNS order (an empty one keeps the columns)."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=GENERATION_COLUMNS)
    return df.astype({"seed": "int64", "row": "int64", "chosen": "Int64", "score": "float64"})


def held_out(cfg, method: str | None = None) -> tuple[list[dict], dict[str, list[dict]], list[dict]]:
    """The test splits the `prepare` stage wrote: learning task (the relabelled control's own for
    `control` under control.learn_options), each forgetting task, general text."""
    from . import paths
    from .stage import load_rows

    return (load_rows(paths.learn_data(method, cfg), "test"),
            {ref.key: load_rows(paths.FORGET_DATA / ref.key, "test") for ref in cfg.data.forget},
            load_rows(paths.GENERAL_DATA, "test"))


def nll_sets(cfg, method: str | None = None) -> dict[str, list[dict]]:
    """The self-generated sets whose NLL every evaluation reports: lwf's D_U (`d_u`: the
    confidence selection), the method's own D_U (`own_d_u`) and each forgetting task's
    self-knowledge (`self/<task>`, unless `evaluate.self_nll` is false)."""
    import pandas as pd

    from . import paths
    from .confidence import as_rows, unlearn_set

    table = pd.read_parquet(paths.CONFIDENCE)
    sets = {"d_u": unlearn_set(table, "high")}
    m = cfg.methods.get(method)
    if m is not None and m.unlearn != "none":
        sets["own_d_u"] = unlearn_set(table, m.selection)
    if cfg.evaluate.self_nll:
        for task, g in table.groupby("forget_task", sort=True):
            sets[f"self/{task}"] = as_rows(g)
    return sets
