"""The frozen-prefix cache (`model.prefix_cache`): with only the top blocks of a Llama-style model
trainable (`model.trainable`), the output of the frozen bottom blocks for a fixed token sequence
never changes during a fine-tune, so it is computed once per row (memoised by the row's token ids)
and every later forward runs only the top blocks, the final norm and the output layer.

`enable_prefix_cache(model)` replaces the forward of that model object (an instance attribute; the
class, the parameter names, `save_pretrained` and everything else stay as they are), so the
fine-tuning loop (`pipeline/train.py`) and `pipeline.data.forward_token_nll` run unchanged:

    cached forward(input_ids, attention_mask, logits_to_keep)
      rows whose ids are not memoised: embeddings + blocks [0, cut) in one batch, stored per row
      (its real positions only, detached, on the model's device)
      hidden = the stored states of every row, right-padded with zeros
      blocks [cut, L) with the same rotary embeddings (positions 0..T-1) and causal + padding mask
      -> final norm -> hidden at `logits_to_keep` -> output layer

Why equal: with right padding and causal attention a real position's hidden state depends only on
the tokens of its own row up to it, so the state of a row computed in any batch is the same (up to
float rounding of the GEMM shapes), and padding positions are masked out of every real position's
attention (their values are never read). Exact conditions, each checked (`PrefixCacheError`, one
sentence): a Llama-style layout (`model.model.embed_tokens`, `.layers`, `.norm`, `.rotary_emb`,
`model.lm_head`); every trainable parameter in blocks [cut, L), the final norm or the output layer
(a tied output layer is the input embedding, below the cut); no attention dropout; no gradient
checkpointing, LoRA or FSDP; right padding (a batch with a padding position before a real one is
refused). A forward that asks for hidden states (the `bss` method reads them), a KV cache or
`labels` runs the model's own forward, uncached.

Turned on by the prefix, optimum, finetune and evaluate stages (`model.prefix_cache`). Both
per-sample-gradient engines (`pipeline/grads.py`) hook the layers of one batched forward and work
through it unchanged for parameters above the cut (tests/test_prefix_cache.py), but the fisher and
confidence stages do not turn it on: they score
each row about once (nothing to reuse within a stage) and `grads.param_regex` may select
parameters below the cut.

Shared between stages (`save_store` / `load_store`): every fine-tune and every evaluation of one
base model has the same frozen blocks, so the `prefix_train` and `prefix_eval` stages run them once
over every row the fine-tunes and the evaluations will feed (learning rows, self-knowledge, test
rows) and write the states; the optimum, finetune and evaluate stages load them and run only the
top blocks. A store carries the cut and a fingerprint of the frozen weights (embeddings, blocks below
the cut, rotary buffers): loading it into a model whose frozen part differs in one bit is refused,
so a stale store can slow a run down (a row not in it is computed) but never change a number.
File (torch.save, weights_only): `version`, `cut`, `fingerprint`, `lengths` (int64, one per row),
`ids` (int64, the rows' token ids concatenated), `states` (rows' hidden states concatenated,
(sum of lengths, hidden size), the model's dtype); or `{"version": 1, "prefix_cache": false}`
when `model.prefix_cache` is off.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from types import MethodType

import torch

log = logging.getLogger("lwf")


class PrefixCacheError(ValueError):
    """A model or setting the frozen-prefix cache cannot handle (one sentence)."""


class PrefixState:
    """The cache of one model: cut (first trainable block), memoised bottom outputs, counters."""

    def __init__(self, cut: int):
        self.cut = cut
        self.store: dict[tuple[int, ...], torch.Tensor] = {}
        self.hits = 0  # rows served from the store
        self.misses = 0  # rows whose bottom blocks ran
        self.loaded = 0  # rows that came from a saved store (load_store)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.store.values())

    def counts(self) -> dict:
        """What a stage reports: rows stored, loaded from a prefix stage, served, run through the bottom."""
        return {"rows": len(self.store), "loaded": self.loaded, "hits": self.hits, "misses": self.misses}


def _layout(model):
    inner = getattr(model, "model", None)
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if inner is None or not all(hasattr(inner, a) for a in needed) or not hasattr(model, "lm_head"):
        raise PrefixCacheError(f"model.prefix_cache needs a Llama-style model (model.embed_tokens, .layers, .norm, "
                               f".rotary_emb and lm_head); {type(model).__name__} is not one")
    return inner


def find_cut(model) -> int:
    """Index of the lowest transformer block with a trainable parameter; PrefixCacheError when a
    trainable parameter sits below it (embeddings) or nothing in the blocks is trainable."""
    inner = _layout(model)
    idx = {id(p): i for i, layer in enumerate(inner.layers) for p in layer.parameters()}
    blocks = sorted({idx[id(p)] for p in model.parameters() if p.requires_grad and id(p) in idx})
    if not blocks:
        raise PrefixCacheError("model.prefix_cache needs model.trainable to select parameters of the top transformer "
                               "blocks; none of the blocks has a trainable parameter")
    for name, p in inner.embed_tokens.named_parameters():
        if p.requires_grad:
            raise PrefixCacheError(f"model.prefix_cache: the input embeddings (model.embed_tokens.{name}, also the "
                                   "output layer when tied) are trainable and sit below every cached block; "
                                   "freeze them in model.trainable or set prefix_cache: false")
    return blocks[0]


def enable_prefix_cache(model) -> PrefixState:
    """Make `model`'s forward run the frozen blocks once per distinct row (see the module docstring);
    returns its `PrefixState` (also `model._lwf_prefix`). Call it after the trainable parameters are set."""
    if hasattr(model, "get_base_model") or hasattr(model, "peft_config"):
        raise PrefixCacheError("model.prefix_cache does not work with model.lora (its adapters sit in every block)")
    from . import dist

    if dist.is_fsdp(model):
        raise PrefixCacheError("model.prefix_cache does not work with launch.strategy 'fsdp' (sharded blocks)")
    flag = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else "is_gradient_checkpointing"
    if getattr(model, flag, False):
        raise PrefixCacheError("model.prefix_cache does not work with model.gradient_checkpointing")
    if float(getattr(model.config, "attention_dropout", 0.0) or 0.0) > 0:
        raise PrefixCacheError(f"model.prefix_cache needs attention_dropout 0 (the model has "
                               f"{model.config.attention_dropout}): a frozen block with dropout is not a fixed function")
    cut = find_cut(model)
    state = PrefixState(cut)
    model._lwf_prefix = state
    model._lwf_uncached_forward = model.forward  # the class's bound forward
    model.forward = MethodType(_cached_forward, model)
    n = len(model.model.layers)
    log.info("model.prefix_cache: blocks 0-%d frozen, cached per row; blocks %d-%d run every step", cut - 1, cut, n - 1)
    return state


def disable_prefix_cache(model) -> None:
    """Back to the model's own forward; the memoised states are dropped."""
    for a in ("forward", "_lwf_prefix", "_lwf_uncached_forward"):
        model.__dict__.pop(a, None)


def _row_lengths(attention_mask: torch.Tensor) -> list[int]:
    lengths = attention_mask.sum(1)
    pos = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    if not bool(((pos[None, :] < lengths[:, None]) == attention_mask.bool()).all()):
        raise PrefixCacheError("model.prefix_cache needs right-padded batches (a padding position comes before a "
                               "real token in this batch)")
    return lengths.tolist()


def _bottom(model, ids: torch.Tensor, mask: torch.Tensor, cut: int) -> torch.Tensor:
    """Hidden states after blocks [0, cut) of a right-padded batch, without gradients."""
    from transformers.masking_utils import create_causal_mask

    inner = model.model
    with torch.no_grad():
        h = inner.embed_tokens(ids)
        pos = torch.arange(h.shape[1], device=h.device).unsqueeze(0)
        causal = create_causal_mask(config=inner.config, inputs_embeds=h, attention_mask=mask, cache=None,
                                    position_ids=pos)
        rope = inner.rotary_emb(h, position_ids=pos)
        for layer in inner.layers[:cut]:
            h = layer(h, attention_mask=causal, position_embeddings=rope, position_ids=pos, cache=None, use_cache=False)
    return h


def _cached_forward(self, input_ids=None, attention_mask=None, logits_to_keep=0, output_hidden_states=None,
                    use_cache=None, labels=None, **kwargs):
    """The model's forward through the frozen-prefix cache (see the module docstring)."""
    from transformers.masking_utils import create_causal_mask
    from transformers.modeling_outputs import CausalLMOutputWithPast
    from transformers.modeling_utils import slice_logits_to_keep

    plain = output_hidden_states or use_cache or labels is not None or input_ids is None or kwargs
    if plain:  # not what the cache serves: the model's own forward, uncached
        return self._lwf_uncached_forward(input_ids=input_ids, attention_mask=attention_mask,
                                          logits_to_keep=logits_to_keep, output_hidden_states=output_hidden_states,
                                          use_cache=use_cache, labels=labels, **kwargs)
    state: PrefixState = self._lwf_prefix
    inner = self.model
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    lengths = _row_lengths(attention_mask)
    keys = [tuple(r[:n]) for r, n in zip(input_ids.tolist(), lengths)]
    missing = [i for i, k in enumerate(keys) if k not in state.store]
    state.hits += len(keys) - len(missing)
    state.misses += len(missing)
    if missing:
        T = max(lengths[i] for i in missing)
        sub = torch.tensor(missing, device=input_ids.device)
        h = _bottom(self, input_ids[sub, :T], attention_mask[sub, :T], state.cut)
        for j, i in enumerate(missing):
            state.store.setdefault(keys[i], h[j, :lengths[i]].detach().clone())
    B, T = input_ids.shape
    first = state.store[keys[0]]
    hidden = first.new_zeros(B, T, first.shape[-1])
    for i, k in enumerate(keys):
        hidden[i, :lengths[i]] = state.store[k]
    pos = torch.arange(T, device=hidden.device).unsqueeze(0)
    causal = create_causal_mask(config=inner.config, inputs_embeds=hidden, attention_mask=attention_mask, cache=None,
                                position_ids=pos)
    rope = inner.rotary_emb(hidden, position_ids=pos)
    for layer in inner.layers[state.cut:]:
        hidden = layer(hidden, attention_mask=causal, position_embeddings=rope, position_ids=pos, cache=None,
                       use_cache=False)
    hidden = inner.norm(hidden)
    logits = self.lm_head(slice_logits_to_keep(hidden, logits_to_keep))
    return CausalLMOutputWithPast(logits=logits)


def fingerprint(model, cut: int) -> str:
    """Hash of everything the frozen bottom computes with: the cut, the input embeddings, the
    blocks below the cut (parameters and buffers, names, dtypes, bytes) and the rotary buffers."""
    inner = _layout(model)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"cut={cut};".encode())
    for prefix, mod in [("embed", inner.embed_tokens), ("rotary", inner.rotary_emb),
                        *[(f"layer{i}", layer) for i, layer in enumerate(inner.layers[:cut])]]:
        for name, t in [*mod.named_parameters(), *mod.named_buffers()]:
            t = t.detach().to("cpu").contiguous()
            h.update(f"{prefix}.{name}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_store(model, path: str | Path) -> int:
    """Write `model`'s memoised bottom states (see the module docstring) to `path`; returns the row count."""
    state: PrefixState = model._lwf_prefix
    keys = list(state.store)
    hidden = model.model.embed_tokens.embedding_dim
    states = (torch.cat([state.store[k].to("cpu") for k in keys]) if keys
              else torch.zeros(0, hidden, dtype=model.model.embed_tokens.weight.dtype))
    torch.save({"version": 1, "cut": state.cut, "fingerprint": fingerprint(model, state.cut),
                "lengths": torch.tensor([len(k) for k in keys], dtype=torch.int64),
                "ids": torch.tensor([i for k in keys for i in k], dtype=torch.int64), "states": states}, path)
    return len(keys)


def save_disabled(path: str | Path) -> None:
    """The placeholder the prefix stage writes when `model.prefix_cache` is off."""
    torch.save({"version": 1, "prefix_cache": False}, path)


_LOADED: dict = {}


def load_store(model, path: str | Path) -> int:
    """Add the states saved in `path` to `model`'s cache (enabled first); returns the rows added.
    Refused (PrefixCacheError) when the store was made for another cut or other frozen weights."""
    state: PrefixState = model._lwf_prefix
    path = Path(path)
    stamp = (str(path.resolve()), path.stat().st_mtime_ns, path.stat().st_size)
    if _LOADED.get("stamp") != stamp:  # one read per process: evaluate loads one store for every seed
        _LOADED.clear()
        _LOADED.update(stamp=stamp, data=torch.load(path, weights_only=True, map_location="cpu"))
    d = _LOADED["data"]
    if d.get("prefix_cache") is False:
        raise PrefixCacheError(f"{path} was written with model.prefix_cache off: run its prefix stage again "
                               "(dvc repro)")
    if d["cut"] != state.cut:
        raise PrefixCacheError(f"{path} holds states below block {d['cut']}, the model's first trainable block is "
                               f"{state.cut}: run its prefix stage again (dvc repro)")
    if d["fingerprint"] != fingerprint(model, state.cut):
        raise PrefixCacheError(f"{path} was made with other frozen weights than this model's blocks below "
                               f"{state.cut}: run its prefix stage again (dvc repro)")
    device = model.model.embed_tokens.weight.device
    lengths = d["lengths"].tolist()
    ids = d["ids"].tolist()
    states = d["states"].to(device).split(lengths) if lengths else []
    start = 0
    for n, h in zip(lengths, states):
        state.store.setdefault(tuple(ids[start:start + n]), h)
        start += n
    state.loaded += len(lengths)
    log.info("model.prefix_cache: %d rows' frozen-block states loaded from %s", len(lengths), path)
    return len(lengths)


def serve_from_store(model, store: str | Path | None) -> PrefixState:
    """The cache on `model` (its trainable blocks marked: `models.trainable_model`), holding the rows of
    the prefix stage's `store` (None: none; rows are stored as they come). PrefixCacheError if the
    model or the store does not fit."""
    state = enable_prefix_cache(model)
    if store is not None:
        load_store(model, store)
    return state
