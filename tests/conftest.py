import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"  # a few rows of each dataset in its real schema


def tiny_lab(hidden=32, layers=2, heads=2, inter=64, seed=0):
    from pipeline.config import LabConfig
    from pipeline.models import build_byte_tokenizer, tiny_llama

    tok = build_byte_tokenizer()
    lab = LabConfig(hidden_size=hidden, num_layers=layers, num_heads=heads, intermediate_size=inter, seed=seed)
    model = tiny_llama(len(tok), lab, max_len=64)
    model.eval()
    return model, tok


@pytest.fixture(scope="session")
def tiny():
    """A randomly initialised 2-layer Llama (width 32) and the byte-level tokenizer."""
    torch.manual_seed(0)
    return tiny_lab()


@pytest.fixture(scope="session")
def scripted(tiny):
    """`scripted(text)`: a stand-in model that answers `text` to every prompt (byte tokenizer)."""
    return lambda text: Scripted(tiny[1], text)


@pytest.fixture(scope="session")
def rows():
    from pipeline.tasks import get_task

    return get_task("lab_learn").load("train", 12, 0, {})


@pytest.fixture
def d_u():
    """An 8-row D_U of lab knowledge the learning task does not touch (4 additions, 4 counts), so that
    its NLL moves only through the unlearning step. A fresh list per test: a run may reorder it."""
    from pipeline.tasks.lab import count_row, neutral_row

    return [neutral_row(a, b) for a, b in ((12, 3), (45, 7), (60, 2), (31, 9))] + \
           [count_row(n) for n in (417, 238, 555, 901)]


@pytest.fixture(scope="session")
def fixture_files():
    """`fixture_files("sst5.jsonl")`: task options that load both splits from tests/fixtures/<name>."""
    return lambda name: {"data_files": {"train": str(FIXTURES / name), "test": str(FIXTURES / name)}}


@pytest.fixture(scope="session")
def eval_result():
    """`eval_result({seed: per-item learning scores}, forget, ppl)`: an evaluate-stage result
    (artifacts/eval/<method>.json) with one forgetting task `f` of 4 items."""
    import numpy as np

    def make(scores_by_seed, forget=0.5, ppl=2.0):
        return {"method": "x", "seeds": {
            str(s): {"learn_score": float(np.mean(v)), "forget_score": forget, "forget_scores": {"f": forget},
                     "perplexity": ppl, "scoring": {"learn/lab_learn": "generate"},
                     "items": {"learn": list(map(float, v)), "forget/f": [forget] * 4}, "train": {}}
            for s, v in scores_by_seed.items()}}

    return make


def markdown_table_rows(text: str, title: str) -> list[list[str]]:
    """The body rows (lists of stripped cells) of the first markdown table after the line containing
    `title` (the tables the benchmark and study scripts print)."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if title in ln)
    body = []
    for ln in lines[start + 1:]:
        if ln.startswith("|"):
            body.append([c.strip() for c in ln.strip().strip("|").split("|")])
        elif body:
            break
    assert len(body) >= 3, text  # header, rule, at least one row
    return body[2:]


@pytest.fixture(scope="session")
def table_rows():
    """`table_rows(text, title)`: `markdown_table_rows` as a fixture."""
    return markdown_table_rows


class Scripted(torch.nn.Module):
    """A stand-in causal LM for `pipeline.generation.generate`: its greedy answer to every prompt is
    the tokens of `text` (cut at max_new_tokens, no EOS); token k gets log-prob `logprobs()[k]`."""

    def __init__(self, tok, text: str):
        super().__init__()
        self.ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # generate() reads the device of a parameter
        self.logits = torch.zeros(len(self.ids), len(tok))
        self.logits[torch.arange(len(self.ids)), self.ids] = torch.arange(len(self.ids), dtype=torch.float) / 10

    def logprobs(self) -> list[float]:
        return self.logits.log_softmax(-1)[torch.arange(len(self.ids)), self.ids].tolist()

    def generate(self, input_ids, max_new_tokens, num_return_sequences=1, logits_processor=(), **_):
        rows, n = input_ids.shape[0] * num_return_sequences, min(max_new_tokens, len(self.ids))
        prompts = input_ids.repeat_interleave(num_return_sequences, 0)
        seq = torch.cat([prompts, self.ids[:n].repeat(rows, 1)], 1)
        for k in range(n):  # as transformers' generate: each step's logits through the processors
            for proc in logits_processor or ():
                proc(seq[:, :prompts.shape[1] + k], self.logits[k].repeat(rows, 1))
        return SimpleNamespace(sequences=seq, logits=tuple(self.logits[:n].repeat(rows, 1, 1).unbind(1)))


@pytest.fixture
def gpt2_dir(tmp_path):
    """A tiny GPT-2-style model (byte tokenizer) saved with save_pretrained, for model.name as a path."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from pipeline.models import build_byte_tokenizer

    tok = build_byte_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=512,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    d = tmp_path / "tiny-gpt2"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d
