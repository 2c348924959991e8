"""Presets: `presets/NAME.yaml` holds only what a setting changes from the defaults (pipeline/config.py);
`lwf preset NAME` writes the full params.yaml that DVC reads: every key, the defaults filled in,
validated, with a comment on what each key means.

A preset is a partial params file and reads like one (`load_config` accepts it as it is): a section
or sub-section it names replaces only the keys it gives; a list, a task (`data.learn`, ...),
`methods`, `options`, `objective_args` and `model.lora` are given whole. `extends: OTHER` starts from
presets/OTHER.yaml instead of the defaults. `lwf preset lab` writes the defaults.
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

from .config import DEFAULT_METHODS, PARAMS_FILE, Config, ConfigError, parse_config, read_params

PRESETS_DIR = Path("presets")
DEFAULTS = "lab"  # `lwf preset lab`: the defaults, no preset file

# What each key means, written beside it in params.yaml (dotted keys; a section's note on its line)
NOTES = {
    "run.seeds": "every method runs under every seed (DVC matrix)",
    "run.methods": "which entries of `methods` run",
    "model.name": "'lab' = embedded tiny Llama; a packaged model; or a HF model id / local path",
    "model.device": "auto | cpu | cuda",
    "model.attn_implementation": "eager | sdpa",
    "model.chat_template": "wrap prompts in the tokenizer's chat template",
    "model.gradient_checkpointing": "in the fine-tune",
    "model.lora": "e.g. {r: 8, alpha: 16, target_modules: [q_proj, v_proj]}: train LoRA adapters only",
    "model.trainable": "regex over parameter names: train only these (fisher, confidence, finetune)",
    "model.prefix_cache": "frozen blocks below `trainable`: once per row for the whole run (docs/speed.md)",
    "model.files": "a file or folder base_model reads: the local model directory (a DVC dependency)",
    "data.files": "a file or folder holding every local data file (a DVC dependency of prepare, optimum, fisher)",
    "model.lab": "the embedded model and its pretraining (base_model stage; used when model.name is lab)",
    "model.lab.conflict_weight": "share of conflicting facts in the pretraining corpus",
    "model.lab.conflict_noise": "share of those facts whose city is drawn at random (not by the rule)",
    "data.general": "general text: its perplexity",
    "grads": "the per-sample-gradient engine (fisher, confidence)",
    "grads.engine": "vectorized | loop",
    "grads.chunk_size": "samples per chunk, or auto (sized from free memory; logged)",
    "grads.param_regex": "e.g. 'layers\\.(1[2-9])\\.' to restrict to a parameter subset",
    "grads.embeddings": "auto (leave embedding matrices out above 16384 tokens) | include | exclude",
    "fisher.kind": "empirical (dataset targets) | true (targets sampled from the model)",
    "fisher.at": "F_L of optimum_distance taken at theta*_L (target: the Laplace reading) | base",
    "elicit.only_wrong": "keep only answers the task's metric marks wrong (tasks with gold)",
    "optimum": "theta*_L: the learning task's optimum approximated from D_L (optimum stage)",
    "optimum.steps": "plain AdamW steps on data/learn train rows from the base model (no unlearning)",
    "optimum.lr": "constant after a linear warmup over warmup_steps; clip 1.0",
    "confidence.score": "optimum_distance (published form) | fisher_distance | fisher_conflict | cosine | probe "
                        "| loss_rise | random",
    "confidence.alpha": "optimum_distance: step size of theta*(x) = theta_base - alpha g_x",
    "confidence.probe": "the probe fine-tune (scores `probe`, `loss_rise`)",
    "confidence.per_task": "select the top fraction per forgetting task instead of globally",
    "confidence.auroc_positive": "AUROC of the confidence: these tasks vs ...",
    "confidence.auroc_negative": "... these (lab only; [] elsewhere)",
    "unlearning": "how every method that unlearns does it, unless it sets the key itself",
    "unlearning.objective": "what the step minimises on a D_U batch: ga | npo | simnpo | wga (pipeline/objectives.py)",
    "unlearning.objective_args": "its arguments, e.g. {beta: 0.1}; omitted ones take the objective's defaults",
    "unlearning.unlearn_every": "N_u: one unlearning step after every N_u learning steps",
    "unlearning.unlearn_optimizer": "separate (SGD step of size unlearn_lr) | adam (AdamW with its own state) | "
                                    "joint (one AdamW step on l(learn) + alpha * objective) | shared (ablation)",
    "unlearning.unlearn_lr": "separate / adam: the step size",
    "unlearning.alpha": "joint / shared: the weight of the objective",
    "unlearning.guard": "graceful (undo + stop when a step raises the guard rows' perplexity by > guard_max_rise) | "
                        "absolute (stop when the D_U batch NLL passes unlearn_max_loss) | none (pipeline/guard.py)",
    "unlearning.guard_max_rise": "graceful: the largest perplexity rise one unlearning step may cause (0.1 = +10%)",
    "unlearning.guard_max_total_rise": "graceful: the largest rise all steps taken may cause together (null: no bound)",
    "unlearning.guard_rows": "graceful: learning rows + as many general-text training rows it watches",
    "unlearning.unlearn_max_loss": "absolute guard: stop unlearning when the NLL on the D_U batch passes this",
    "methods": "a method is data (pipeline/train.py): unlearn none | periodic | early, selection, bss, match_steps, "
               "train; any `unlearning` key",
    "methods.base": "the base model itself, no fine-tuning (a row of the report; deltas stay vs vanilla)",
    "methods.vanilla_matched": "+ one learning step per unlearning step of a method with these settings",
    "methods.lwf_ga": "the paper's objective (gradient ascent) at the same step, side by side",
    "methods.lwf_early": "all unlearning steps before the first learning step",
    "methods.lwf_oracle": "D_U drawn from confidence.auroc_positive (lab)",
    "methods.forget_then_learn": "F-Learning: negate_steps on D_U subtracted (x negate_scale) before vanilla",
    "finetune": "the learning recipe every method shares",
    "finetune.lr_schedule": "constant | linear | cosine",
    "finetune.grad_clip": "learning and unlearning steps",
    "evaluate.self_nll": "NLL of every forgetting task's whole self-knowledge (false: D_U sets only)",
    "lm_eval": "lm-evaluation-harness on every fine-tuned model (extra `eval`; docs/lm-eval.md)",
    "lm_eval.tasks": "lm-eval task/group/tag names, e.g. [lwf_sst5]; [] = none (lm_eval not imported)",
    "lm_eval.include_path": "folder of extra task YAMLs (the shipped local-file tasks); tracked by DVC",
    "lm_eval.limit": "the first N test docs per task (a float in (0, 1): that share); null = all",
    "lm_eval.num_fewshot": "null = each task's own default",
    "lm_eval.batch_size": "or auto / auto:N",
    "lm_eval.max_length": "null = the model config's context length",
    "lm_eval.apply_chat_template": "null = as model.chat_template",
    "control.enabled": "negative-transfer check (the lab, or any model with learn_options)",
    "control.corpus": "the control's pretraining: random_cities | without_facts",
    "control.learn_options": "any model: the base model learns data.learn with these options instead",
    "launch": "fisher, elicit, confidence, finetune, evaluate",
    "launch.num_processes": "> 1: `accelerate launch` (data parallel; gloo on CPU, nccl on GPUs)",
    "launch.mixed_precision": "no | bf16",
    "launch.strategy": "ddp (a full model per process) | fsdp (weights, grads, AdamW sharded: FSDP2)",
}
FLOW_WIDTH = 100  # a mapping or list shorter than this on one line is written on one line
COMMENT_COLUMN = 35


def preset_file(name: str) -> Path | None:
    """The preset file of `name` (presets/NAME.yaml; a path works too), None for the defaults."""
    if name == DEFAULTS:
        return None
    path = Path(name)
    if path.suffix != ".yaml":
        path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted([DEFAULTS, *(p.stem for p in PRESETS_DIR.glob("*.yaml"))])
        raise ConfigError(f"preset {name!r} not found ({path}); presets: {', '.join(known)}")
    return path


def read_preset(name: str) -> dict:
    """A preset's differences as written (an empty mapping for the defaults)."""
    path = preset_file(name)
    raw = {} if path is None else read_params(path)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"preset {name!r}: the top level must be a mapping of sections")
    return raw


def method_keys(raw: dict, cfg: Config) -> dict[str, dict]:
    """Each method as params.yaml writes it: the keys the preset (or DEFAULT_METHODS) sets, validated."""
    own = raw.get("methods", DEFAULT_METHODS)
    return {name: {k: cfg.methods[name].model_dump(mode="json")[k] for k in m} for name, m in own.items()}


def full_params(raw: dict) -> tuple[Config, dict]:
    """The validated config of a preset's differences, and the full params mapping that writes it."""
    cfg = parse_config(raw)
    full = cfg.model_dump(mode="json")
    full["methods"] = method_keys(raw, cfg)
    return cfg, full


def _yaml():
    from ruamel.yaml import YAML

    y = YAML()  # round-trip, YAML 1.2: what DVC's `exp run -S` reads and writes back
    y.width = 4096
    y.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def _scalar(v):
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString, SingleQuotedScalarString

    if isinstance(v, str):
        if "\\" in v:
            return SingleQuotedScalarString(v)
        if v.lower() in ("yes", "no", "on", "off", "y", "n", "true", "false", "null", "~", ""):
            return DoubleQuotedScalarString(v)  # a string under YAML 1.1 readers (PyYAML) too
    return v


def _flow_text(v) -> str:
    buf = io.StringIO()
    y = _yaml()
    y.dump({"k": _node(v, flow=True)}, buf)
    return buf.getvalue().strip()


def _node(v, path: str = "", flow: bool = False):
    """ruamel nodes for a value: mappings and lists on one line when short, else one key per line."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(v, dict):
        if "task" in v and v.get("options") == {}:  # a task without options (data.learn, data.forget, ...)
            v = {k: x for k, x in v.items() if k != "options"}
        node = CommentedMap((k, _node(x, f"{path}.{k}", flow)) for k, x in v.items())
    elif isinstance(v, list):
        node = CommentedSeq(_node(x, path, flow) for x in v)
    else:
        return _scalar(v)
    if flow:
        node.fa.set_flow_style()
        return node
    if "." in path and len(_flow_text(v)) <= FLOW_WIDTH and \
            not (isinstance(v, dict) and any(f"{path}.{k}" in NOTES for k in v)):
        return _node(v, path, flow=True)
    if isinstance(v, dict):
        for k in v:
            if f"{path}.{k}" in NOTES:
                node.yaml_add_eol_comment(NOTES[f"{path}.{k}"], k, column=COMMENT_COLUMN)
    return node


def render(full: dict, header: str) -> str:
    """params.yaml text: one block per section, a blank line between them."""
    from ruamel.yaml.comments import CommentedMap

    parts = [header.rstrip("\n") + "\n"]
    for section, value in full.items():
        node = CommentedMap([(section, _node(value, section))])
        if section in NOTES:
            node.yaml_add_eol_comment(NOTES[section], section, column=COMMENT_COLUMN)
        buf = io.StringIO()
        _yaml().dump(node, buf)
        parts.append(re.sub(r"([]}]) # ", r"\1   # ", buf.getvalue()))  # a note after a long one-line value
    return "\n".join(parts)


def header(name: str) -> str:
    path = preset_file(name)
    source = "the defaults in pipeline/config.py (the embedded lab)" if path is None else \
        f"{path.as_posix()} (its comments say why) over the defaults in pipeline/config.py"
    return (f"# params.yaml, written by `lwf preset {name}`: {source}.\n"
            "# Every key the pipeline reads, validated by pipeline/config.py. Edit it or use `dvc exp run -S`;\n"
            "# `lwf preset NAME` writes it anew.\n")


def params_text(name: str, raw: dict | None = None) -> tuple[Config, str]:
    """The validated config of preset `name` (or of `raw`, its differences, when given) and the full
    params.yaml text that writes it (checked to read back as the same config)."""
    raw = read_preset(name) if raw is None else raw
    cfg, full = full_params(raw)
    text = render(full, header(name))
    if parse_config(_yaml_load(text)) != cfg:
        raise ConfigError(f"preset {name!r}: params.yaml would not read back as the preset's config")
    return cfg, text


def write_params(name: str, path: str | os.PathLike = PARAMS_FILE) -> Config:
    """Write the full params file of preset `name`, atomically: the old file stays on any error."""
    cfg, text = params_text(name)
    write_atomic(path, text)
    return cfg


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace the file at `path` by `text` in one step: the old file stays on any error."""
    import tempfile

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as an ordinary new file (mkstemp makes it private)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _yaml_load(text: str) -> Any:
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load(text)
