import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


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
