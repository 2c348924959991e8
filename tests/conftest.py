import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from pathlib import Path  # noqa: E402

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
def rows():
    from pipeline.tasks import get_task

    return get_task("lab_learn").load("train", 12, 0, {})
