"""lm-evaluation-harness (EleutherAI's `lm_eval`, the optional extra `eval`) as an evaluator of
every fine-tuned model: params `lm_eval`, stages lm_eval@<method>-<task>, docs/lm-eval.md.

The model is the one the pipeline loaded (`models.load_model`: dtype, device, attention) and it is
fed as the pipeline feeds it (`pipeline.data.prompt_ids`): the tokenizer adds no special tokens of
its own, and with `model.add_bos` (and no chat template) the BOS token starts every context; with
a chat template the prompt is the user turn, the template's generation prompt after it. Tasks come
from lm-eval's own registry (hub datasets, where the hub is reachable) and from
`lm_eval.include_path` (the shipped local-file tasks, `lm_eval_tasks/`). Nothing here imports
`lm_eval` before a task is listed.
"""
from __future__ import annotations

import difflib
import importlib.util
import logging
import math
from pathlib import Path

from .stage import UserError

log = logging.getLogger("lwf")

INSTALL = "pip install -e '.[eval]'"


def require_lm_eval(tasks: list[str]) -> None:
    """UserError naming the install command when tasks are listed but lm-eval is not installed."""
    if importlib.util.find_spec("lm_eval") is None:
        raise UserError(f"lm_eval.tasks lists {', '.join(tasks)} but lm-evaluation-harness is not installed; "
                        f"install the extra: {INSTALL}")


def task_manager(tasks: list[str], include_path: str):
    """An lm-eval TaskManager that knows every listed task; UserError for a name it does not know.
    Only `include_path` is indexed when it holds every listed task (lm-eval's own registry of
    ~15k names takes about 13 s to index on 2 CPU cores)."""
    from lm_eval.tasks import TaskManager

    if not Path(include_path).is_dir():
        raise UserError(f"lm_eval.include_path {include_path!r} is not a directory")
    local = TaskManager(include_path=include_path, include_defaults=False)
    if all(local.match_tasks([t]) for t in tasks):
        return local
    full = TaskManager(include_path=include_path)
    for t in tasks:
        if not full.match_tasks([t]):
            near = difflib.get_close_matches(t, full.all_tasks, n=3)
            raise UserError(f"lm_eval.tasks: unknown task {t!r}: neither an lm-eval task, group or tag nor a task "
                            f"in {include_path}/" + (f"; close: {', '.join(near)}" if near else ""))
    return full


def project_lm(model, tok, batch_size, max_length: int | None, add_bos: bool, chat: bool = False):
    """lm-eval's HFLM over the in-memory `model`, fed as the pipeline feeds it
    (`pipeline.data.encode`): no special tokens from the tokenizer; `add_bos`: the BOS token first
    in every loglikelihood context (lm-eval's own empty-context and rolling requests already start
    with it) and every generation prompt; `chat`: context (the chat-templated prompt) and
    continuation tokenised apart, so the template's generation prompt stays whole in the context
    (lm-eval would move its trailing newline into every continuation)."""
    from lm_eval.models.huggingface import HFLM

    bos = [tok.bos_token_id] if add_bos and tok.bos_token_id is not None else []

    class ProjectLM(HFLM):
        def _encode_pair(self, context, continuation):
            if chat:
                return self.tok_encode(context), self.tok_encode(continuation)
            ctx, cont = super()._encode_pair(context, continuation)
            return (bos + ctx if ctx[:1] != bos else ctx), cont

        def tok_batch_encode(self, strings, *args, **kwargs):
            if bos:
                strings = [s if s.startswith(tok.bos_token) else tok.bos_token + s for s in strings]
            return super().tok_batch_encode(strings, *args, **kwargs)

    return ProjectLM(pretrained=model, tokenizer=tok, batch_size=batch_size, max_length=max_length,
                     add_bos_token=False)


def run_tasks(model, tok, cfg, add_bos: bool, chat: bool, manager, tasks: list[str] | None = None) -> dict:
    """simple_evaluate of `tasks` (default: `cfg.tasks`) on one model with the settings of params
    `lm_eval` (`cfg`); lm-eval's output dict."""
    from lm_eval import simple_evaluate

    tasks = list(cfg.tasks if tasks is None else tasks)
    lm = project_lm(model, tok, cfg.batch_size, cfg.max_length, add_bos and not chat, chat)
    try:
        return simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=cfg.num_fewshot, limit=cfg.limit,
                               task_manager=manager, log_samples=True, apply_chat_template=chat,
                               fewshot_as_multiturn=chat)
    except (FileNotFoundError, ConnectionError) as e:  # a task's data file, or the hub offline
        raise UserError(f"lm-eval could not load the data of {', '.join(tasks)}: {type(e).__name__}: {e}") from None


def _metric_name(key: str) -> tuple[str, bool] | None:
    """'acc,none' -> ('acc', False); 'acc_stderr,none' -> ('acc', True); filters other than
    'none' stay in the name: 'exact_match,strict-match'. None for keys that are not metrics."""
    if "," not in key:
        return None
    metric, filt = key.split(",", 1)
    stderr = metric.endswith("_stderr")
    metric = metric[: -len("_stderr")] if stderr else metric
    return (metric if filt == "none" else f"{metric},{filt}"), stderr


def _number(v) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):  # lm-eval writes "N/A" for a stderr it cannot compute
        return None
    return None if math.isnan(x) else x


def seed_result(out: dict) -> dict:
    """The parts of one simple_evaluate output the report needs: per task (and group) each
    metric's value and lm-eval's stderr; per leaf task the per-doc values of each metric whose
    score is the mean over docs (in doc order; the report pairs them across methods)."""
    results: dict[str, dict] = {}
    for task, entry in out["results"].items():
        metrics: dict[str, dict] = {}
        for key, v in entry.items():
            parsed = _metric_name(key)
            if parsed is None:
                continue
            name, is_stderr = parsed
            metrics.setdefault(name, {"value": None, "stderr": None})["stderr" if is_stderr else "value"] = _number(v)
        results[task] = {k: m for k, m in metrics.items() if m["value"] is not None}
    items: dict[str, dict[str, list[float]]] = {}
    for task, samples in (out.get("samples") or {}).items():
        per: dict[str, list[tuple[int, float]]] = {}
        for s in samples:
            for metric in s.get("metrics", []):
                name = metric if s.get("filter", "none") == "none" else f"{metric},{s['filter']}"
                x = s.get(metric)
                if isinstance(x, (bool, int, float)):
                    per.setdefault(name, []).append((int(s["doc_id"]), float(x)))
        for name, pairs in per.items():
            vals = [x for _, x in sorted(pairs)]
            agg = results.get(task, {}).get(name, {}).get("value")
            # only a metric whose task score is the mean over docs is resampled per doc
            if agg is not None and vals and abs(sum(vals) / len(vals) - agg) <= 1e-9 * max(1.0, abs(agg)):
                items.setdefault(task, {})[name] = vals
    return {"results": results, "items": items,
            "n_samples": out.get("n-samples", {}), "n_shot": out.get("n-shot", {}),
            "versions": out.get("versions", {}), "higher_is_better": out.get("higher_is_better", {}),
            "groups": out.get("group_subtasks", {}), "lm_eval_version": out.get("lm_eval_version")}


def write_samples(folder: Path, out: dict) -> dict[str, int]:
    """Each task's per-sample outputs (lm-eval's `log_samples` records) as `<task>.jsonl` in
    `folder`; returns task -> number of records."""
    import json

    from lm_eval.utils import handle_non_serializable

    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for task, samples in (out.get("samples") or {}).items():
        with open(folder / f"{task}.jsonl", "w") as f:
            for s in samples:
                f.write(json.dumps(s, default=handle_non_serializable, ensure_ascii=False) + "\n")
        counts[task] = len(samples)
    return counts
