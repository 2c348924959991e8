"""Where every artifact lives (relative to the project root). docs/artifacts.md
documents each one; dvc.yaml declares the same paths."""
from pathlib import Path

DATA = Path("data")
LEARN_DATA = DATA / "learn"
FORGET_DATA = DATA / "forget"
GENERAL_DATA = DATA / "general"
LEARN_CONTROL_DATA = DATA / "learn_control"  # the relabelled control's learning task (control.learn_options)
BASE_MODEL = Path("artifacts/base_model")
CONTROL = "control"  # the run name of the negative-transfer control (the vanilla recipe from its own base model)
CONTROL_BASE_MODEL = Path("artifacts/control_base_model")
FISHER = Path("artifacts/fisher.safetensors")
OPTIMUM = Path("artifacts/optimum.safetensors")
SELF_KNOWLEDGE = Path("artifacts/self_knowledge.parquet")
CONFIDENCE = Path("artifacts/confidence.parquet")
PREFIX = Path("artifacts/prefix")  # frozen-block states of the base model (model.prefix_cache)
MODELS = Path("artifacts/models")
EVAL = Path("artifacts/eval")
LM_EVAL = EVAL / "lm_eval"  # inside EVAL: the report's one dependency on every evaluation, listed or not
TRAIN_LOGS = Path("logs/train")
METRICS = Path("metrics")
REPORTS = Path("reports")
CHECKPOINTS = Path(".lwf/checkpoints")


def base_model_dir(method: str) -> Path:
    """The base model a run fine-tunes: the control's own for `control`, else the pipeline's."""
    return CONTROL_BASE_MODEL if method == CONTROL else BASE_MODEL


def learn_data(method: str | None, cfg) -> Path:
    """The learning rows a run reads: the relabelled control's own for `control` under
    control.learn_options, else the learning task's (only the control reads that key: a stage
    declares in dvc.yaml the params it reads)."""
    return LEARN_CONTROL_DATA if method == CONTROL and not own_base_model(method, cfg) else LEARN_DATA


def own_base_model(method: str | None, cfg) -> bool:
    """Whether the run starts from a base model of its own, one the prefix stores were not made from:
    the lab's pretrained control (the relabelled control, control.learn_options, starts from the
    base model itself)."""
    return method == CONTROL and cfg.control.learn_options is None


def model_dir(method: str, seed: int) -> Path:
    return MODELS / method / f"seed{seed}"


def train_log(method: str, seed: int) -> Path:
    return TRAIN_LOGS / method / f"seed{seed}.csv"


def eval_file(method: str) -> Path:
    return EVAL / f"{method}.json"


def generations_file(method: str) -> Path:
    """Per seed, task and test row of `method`: prompt, gold answer, generation and score (docs/artifacts.md)."""
    return EVAL / f"{method}.generations.parquet"


def checkpoint(method: str, seed: int) -> Path:
    return CHECKPOINTS / f"{method}-seed{seed}.pt"


def finished(method: str, seed: int) -> Path:
    """A finished seed's outputs, kept until its method's stage is done (pipeline.checkpoint.Finished)."""
    return CHECKPOINTS / f"{method}-seed{seed}.finished"


def lm_eval_dir(method: str, task: str) -> Path:
    """One listed lm-eval task (or group) on one method: results.json (metrics per seed and task, a
    group's subtasks included) and samples/seed<k>/<task>.jsonl (lm-eval's per-sample records)."""
    return LM_EVAL / method / task


def prefix_store(part: str) -> Path:
    return PREFIX / f"{part}.pt"
