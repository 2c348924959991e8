"""The graceful frontier of each unlearning objective on SmolLM2-135M-Instruct (the powered CPU
preset, presets/smollm2_cpu_power.yaml), on VALIDATION data: for every objective
(pipeline/objectives.py) and step size (`unlearn_lr`, separate SGD steps), how far lwf's D_U NLL
rises against how much general-text perplexity, the learning score and the forgetting score change,
each paired with vanilla on the same fine-tuning seed and the same held-out items. The lab's version
is objective_frontier.py beside it; this one fine-tunes the real model.

Run it in a project where `dvc repro` of the preset has finished: it reads that run's base model
(artifacts/base_model), its confidence table (D_U = the rows lwf's `selection` picks, with their
reference NLL, as finetune@lwf reads them), its learning rows and its prefix_train store, and
fine-tunes exactly as finetune@<method> does (pipeline.train.finetune, the preset's `finetune`
recipe and lwf's settings) with lwf's `objective` (registry defaults of its arguments) and
`unlearn_lr` replaced:

    lwf preset smollm2_cpu_power && dvc repro
    python experiments/objective_frontier/objective_frontier_real.py --seeds 0 1 2 --objectives ga npo simnpo wga \\
        --lrs 0.003 0.01 0.03 --out docs/results/frontier_smollm2

Validation data (every choice is made on it; no test row is read):
    learning task: `--n-learn` rows of SST-5's validation split (drawn with data.seed + 1)
    forgetting task: the forgetting task's training pool, all of it (psychology: the 129 MMLU
        validation prompts: the very prompts of the self-knowledge, so this score overlaps D_self)
    general text: `--n-general` GSM8K *training* questions (the preset's perplexity rows are GSM8K test)

Each fine-tune's scores are written to OUT_runs/<method>_seed<k>.json as soon as it finishes and
reused when the script runs again with the same settings (the file records them), so a long run
can be resumed. Prints one table (per objective and step: the paired deltas with 95% intervals over
fine-tuning seeds and items) and writes OUT.csv (the points of the frontier plot; `dvc plots show`
via dvc.yaml's top-level `plots`) and OUT.png.
"""
import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
from objective_frontier import ci_columns, items, write_frontier

sys.path.append(str(Path(__file__).resolve().parents[2]))  # the repository: experiments._common
from experiments._common import held_out, interval, machine, table  # noqa: E402

from pipeline import paths  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.evaluate import evaluate_model  # noqa: E402
from pipeline.io import write_json  # noqa: E402
from pipeline.models import load_model, trainable_model  # noqa: E402
from pipeline.objectives import check_args  # noqa: E402
from pipeline.prefix_cache import enable_prefix_cache, load_store  # noqa: E402
from pipeline.report import paired_bootstrap, perplexity_bootstrap  # noqa: E402
from pipeline.runs import run_rows  # noqa: E402
from pipeline.checkpoint import rows_digest, weights_digest  # noqa: E402
from pipeline.train import finetune  # noqa: E402


class Runner:
    """Fine-tunes copies of the run's base model through one shared frozen-prefix store and scores
    them on the validation rows; results cached per fine-tune under `cache_dir`."""

    def __init__(self, cfg, n_learn: int, n_general: int, cache_dir: Path):
        self.cfg, self.cache_dir = cfg, cache_dir
        self.plain, self.tok = load_model(paths.BASE_MODEL, cfg.model)
        lwf = cfg.methods["lwf"]
        self.learn, self.d_u, self.guard_rows = run_rows(cfg, lwf)  # what finetune@lwf reads
        self.sets = {"d_u": [{k: v for k, v in r.items() if k != "ref_nll"} for r in self.d_u]}
        self.val = held_out(cfg, "validation", n_learn, n_general, forget_size="n_train")
        self.store = None
        # what a cached fine-tune's scores depend on: the rows, the recipe, the model and its base weights
        self.settings = {"n_learn": n_learn, "n_general": n_general, "learn": rows_digest(self.learn),
                         "d_u": rows_digest(self.d_u), "guard": rows_digest(self.guard_rows),
                         "base_model": weights_digest(self.plain),
                         **{k: getattr(cfg, k).model_dump(mode="json") for k in ("model", "data", "finetune", "evaluate",
                                                                                   "launch")}}
        print(f"{cfg.model.name}: {len(self.learn)} learning rows, D_U {len(self.d_u)} rows ({lwf.selection}); "
              f"validation: {len(self.val[0])} {cfg.data.learn.task}, "
              + ", ".join(f"{len(v)} {k}" for k, v in self.val[1].items()) + f", {len(self.val[2])} general",
              flush=True)

    def _model(self):
        m = trainable_model(copy.deepcopy(self.plain), self.cfg.model)
        if self.cfg.model.prefix_cache:
            state = enable_prefix_cache(m)
            if self.store is None:  # the prefix_train store once; every copy shares it (same frozen blocks)
                load_store(m, paths.prefix_store("train"))
                self.store = state.store
            state.store = self.store
        return m

    def run(self, name: str, method, seed: int | None) -> dict:
        """Scores of `method` fine-tuned with `seed` (seed None: the base model, not fine-tuned)."""
        f = self.cache_dir / f"{name}_seed{seed}.json"
        key = json.loads(json.dumps({**self.settings, "seed": seed,
                                     "method": method.model_dump(mode="json") if method else None}))
        if f.exists():
            got = json.loads(f.read_text())
            if got["key"] == key:
                return got["result"]
        t0 = time.time()
        m = self._model()
        stats = {}
        if method is not None:
            rows = self.d_u if method.unlearn != "none" else []
            _, stats = finetune(m, self.tok, self.learn, rows, self.cfg.finetune, method, seed,
                                self.cfg.data.max_length, self.cfg.model.add_bos, run_id=f"{name}-seed{seed}",
                                mixed_precision=self.cfg.launch.mixed_precision, guard_rows=self.guard_rows)
        learn, forget, general = self.val
        res = evaluate_model(m, self.tok, self.cfg.data, learn, forget, general, self.cfg.evaluate,
                             self.cfg.model.add_bos, self.sets)
        out = {**{k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in items(res).items()},
               "unlearn_steps_taken": stats.get("unlearn_steps_taken", 0), "seconds": time.time() - t0}
        write_json(f, {"key": key, "result": out})
        print(f"{name} seed {seed}: learn {np.mean(out['learn']):.3f}, forget {np.mean(out['forget']):.3f}, "
              f"ppl {out['ppl']:.2f}, D_U NLL {np.mean(out['d_u']):.3f}, "
              f"{out['unlearn_steps_taken']} unlearning steps, {out['seconds']:.0f} s", flush=True)
        return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--objectives", nargs="+", default=["ga", "npo", "simnpo", "wga"])
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.003, 0.01, 0.03])
    ap.add_argument("--n-learn", type=int, default=300, help="SST-5 validation rows (300: all the vendored ones)")
    ap.add_argument("--n-general", type=int, default=100)
    ap.add_argument("--out", default="docs/results/frontier_smollm2")
    ap.add_argument("--params", default="params.yaml")
    a = ap.parse_args()
    cfg = load_config(a.params)
    for obj in a.objectives:  # an unknown objective fails here, before any fine-tune
        check_args(obj, {})
    out = Path(a.out)
    runner = Runner(cfg, a.n_learn, a.n_general, Path(f"{out}_runs"))
    base = runner.run("base", None, None)
    A = lambda r, k: np.asarray(r[k], float)  # noqa: E731
    van = {s: runner.run("vanilla", cfg.methods["vanilla"], s) for s in a.seeds}
    ppl_v = float(np.mean([van[s]["ppl"] for s in a.seeds]))
    res = []
    for obj in a.objectives:
        for lr in a.lrs:
            method = cfg.methods["lwf"].model_copy(update={"objective": obj, "objective_args": {}, "unlearn_lr": lr})
            lw = {s: runner.run(f"lwf_{obj}_{lr:g}", method, s) for s in a.seeds}
            pair = lambda k: np.stack([A(lw[s], k) - A(van[s], k) for s in a.seeds])  # noqa: E731
            ppl = perplexity_bootstrap(np.stack([A(lw[s], "nll") for s in a.seeds]),
                                       np.stack([A(van[s], "nll") for s in a.seeds]), A(van[a.seeds[0]], "tokens"),
                                       2000, 0)
            res.append({"objective": obj, "unlearn_lr": lr,
                        "d_u_nll_rise": paired_bootstrap(pair("d_u"), 2000, 0),
                        "ppl_change": tuple(x / ppl_v for x in ppl),  # relative to vanilla's perplexity
                        "learn_delta": paired_bootstrap(pair("learn"), 2000, 0),
                        "forget_delta": paired_bootstrap(pair("forget"), 2000, 0),
                        "unlearn_steps": [lw[s]["unlearn_steps_taken"] for s in a.seeds]})
    van_learn = np.mean([A(van[s], "learn").mean() for s in a.seeds])
    print(f"\nvalidation: base model learn {A(base, 'learn').mean():.3f}, forget {A(base, 'forget').mean():.3f}, "
          f"ppl {base['ppl']:.2f}, D_U NLL {A(base, 'd_u').mean():.3f}; vanilla (seeds {a.seeds}) learn "
          f"{van_learn:.3f}, forget {np.mean([A(van[s], 'forget').mean() for s in a.seeds]):.3f}, ppl {ppl_v:.2f}, "
          f"D_U NLL {np.mean([A(van[s], 'd_u').mean() for s in a.seeds]):.3f}")
    table(f"Unlearning objectives on {cfg.model.name}, validation split: lwf - vanilla, 95% paired intervals over "
          f"fine-tuning seeds {a.seeds} and items; {machine()}",
          ["objective", "unlearn_lr", "D_U NLL rise", "perplexity change", "learning score Δ", "forgetting score Δ",
           "unlearning steps taken (per seed)"],
          [[r["objective"], r["unlearn_lr"], interval(*r["d_u_nll_rise"]),
            interval(*[100 * x for x in r["ppl_change"]]) + " %", interval(*r["learn_delta"]),
            interval(*r["forget_delta"]), "/".join(str(s) for s in r["unlearn_steps"])] for r in res])
    write_frontier([{"model": cfg.model.name, "objective": r["objective"], "unlearn_lr": r["unlearn_lr"],
                     "split": "validation", **ci_columns(r), "vanilla_learn": van_learn, "vanilla_ppl": ppl_v,
                     "unlearn_steps_taken": float(np.mean(r["unlearn_steps"]))} for r in res], out)

if __name__ == "__main__":
    main()
