"""The one per-sample-gradient engine. Fisher (`fisher.py`) and confidence (`confidence.py`) are
small reductions over what `iter_per_sample_grads` yields, so they cannot drift apart.

Two engines give the same numbers (tested to 1e-5 relative):

- ``loop``: one forward/backward per sample, `torch.autograd.grad` w.r.t. the parameters.
  The reference, and the fallback for models with layers the vectorised engine does not know.
- ``vectorized``: ONE forward and ONE backward per chunk. Forward hooks record each parametrised
  leaf module's input; the backward asks only for the gradients of those modules' *outputs*
  (no parameter-gradient GEMMs at all), and per-sample parameter gradients are formed from
  (input, output-gradient) pairs, the Opacus/BackPACK way:
    nn.Linear     dW_b = sum_t g_bt a_bt^T (one bmm), db_b = sum_t g_bt
    nn.Embedding  dE_b = scatter-add of g_bt into the rows of the tokens of sample b
    other leaves  (RMSNorm, LayerNorm, ...) torch.func.vmap of the module's own VJP.
  This is exact because the loss is a sum of per-sample losses and no layer mixes samples
  (right padding + causal attention keep padding out of every real position).

Samples are taken sorted by length (`length_chunks`), logits only at target positions
(`data.forward_loss`); embedding matrices of large vocabularies are left out by default
(`select_params`, grads.embeddings).

Tied parameters (one tensor used by several modules, e.g. tied embeddings) get the sum of
their per-call contributions, as autograd would. Memory is bounded by the chunk size: the
engine yields one chunk at a time and keeps no per-sample gradients of the whole set.
"""
from __future__ import annotations

import logging
import re
from typing import Iterable, Iterator

import torch
from torch import nn

from . import dist
from .data import collate, encode_rows, forward_loss

log = logging.getLogger("lwf")


# `grads.embeddings: auto` leaves the (input and output) embedding matrices out of the per-sample
# gradients above this vocabulary size: a dense per-sample gradient of a V x D matrix is V x D floats
# per sample (SmolLM2: 49152 x 576 x 4 B = 113 MB, 0.9 GB per chunk of 8), almost all of it zero rows.
EMBEDDINGS_AUTO_MAX_VOCAB = 16384
_logged: set = set()


def _log_once(msg: str, *args) -> None:
    key = msg % args
    if key not in _logged:
        _logged.add(key)
        log.info(msg, *args)


def embedding_params(model: nn.Module) -> tuple[set[int], int]:
    """(ids of the input / output embedding matrices, the vocabulary size); tied matrices are one."""
    ids, vocab = set(), 0
    for get in ("get_input_embeddings", "get_output_embeddings"):
        try:
            mod = getattr(model, get)()
        except (AttributeError, NotImplementedError):
            mod = None
        w = getattr(mod, "weight", None)
        if isinstance(w, torch.Tensor):
            ids.add(id(w))
            vocab = max(vocab, int(w.shape[0]))
    return ids, vocab


def select_params(model: nn.Module, regex: str | None = None, embeddings: str = "auto") -> dict[str, nn.Parameter]:
    """Trainable parameters (optionally those whose name matches `regex`), by name. `embeddings`:
    "include" keeps the input/output embedding matrices, "exclude" drops them, "auto" drops them
    when the vocabulary is larger than EMBEDDINGS_AUTO_MAX_VOCAB (logged once)."""
    if embeddings not in ("auto", "include", "exclude"):
        raise ValueError(f"grads.embeddings must be auto, include or exclude, not {embeddings!r}")
    pat = re.compile(regex) if regex else None
    out = {n: p for n, p in model.named_parameters() if p.requires_grad and (pat is None or pat.search(n))}
    dropped = []
    if embeddings != "include":
        emb, vocab = embedding_params(model)
        if embeddings == "exclude" or vocab > EMBEDDINGS_AUTO_MAX_VOCAB:
            dropped = [n for n, p in out.items() if id(p) in emb]
            out = {n: p for n, p in out.items() if id(p) not in emb}
            if dropped and embeddings == "auto":
                _log_once("grads.embeddings auto: per-sample gradients leave out %s (vocabulary %d > %d: a dense "
                          "per-sample gradient would be %.0f MB per sample); set grads.embeddings: include to keep them",
                          ", ".join(dropped), vocab, EMBEDDINGS_AUTO_MAX_VOCAB,
                          sum(model.get_parameter(n).numel() for n in dropped) * 4 / 1e6)
    if not out:
        extra = f" (grads.embeddings={embeddings!r} left out {dropped})" if dropped else ""
        raise ValueError(f"grads.param_regex={regex!r} selects no trainable parameter{extra}")
    return out


# ---------------------------------------------------------------- the loop (reference) engine
def _loop_chunk(model, params: dict, encs, pad_id, device) -> dict[str, torch.Tensor]:
    names, tensors = list(params), list(params.values())
    rows = {n: [] for n in names}
    for e in encs:
        batch = collate([e], pad_id, device)
        loss, _ = forward_loss(model, batch)
        gs = torch.autograd.grad(loss.sum(), tensors, allow_unused=True)
        for n, g, p in zip(names, gs, tensors):
            rows[n].append(torch.zeros_like(p) if g is None else g.detach())
    return {n: torch.stack(v) for n, v in rows.items()}


# ---------------------------------------------------------------- the vectorised engine
class UnsupportedModel(RuntimeError):
    pass


def _linear_grads(mod: nn.Linear, a: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    a = a.reshape(a.shape[0], -1, a.shape[-1])
    g = g.reshape(g.shape[0], -1, g.shape[-1])
    # bmm of the contiguous (B, O, T) transpose: 2x faster on CPU than einsum("bto,bti->boi") (measured)
    out = {"weight": torch.bmm(g.transpose(1, 2).contiguous(), a.to(g.dtype).contiguous())}
    if mod.bias is not None:
        out["bias"] = g.sum(1)
    return out


def _embedding_grads(mod: nn.Embedding, ids: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    B, D = g.shape[0], g.shape[-1]
    ids = ids.reshape(B, -1)
    g = g.reshape(B, -1, D)
    w = torch.zeros(B, mod.num_embeddings, D, dtype=g.dtype, device=g.device)
    w.scatter_add_(1, ids.unsqueeze(-1).expand(-1, -1, D), g)
    if mod.padding_idx is not None:
        w[:, mod.padding_idx] = 0
    return {"weight": w}


def _generic_grads(mod: nn.Module, x: torch.Tensor, g: torch.Tensor, own: dict) -> dict[str, torch.Tensor]:
    from torch.func import functional_call, vjp, vmap

    params = {k: v.detach() for k, v in own.items()}

    def one(xb, gb):
        _, pull = vjp(lambda p: functional_call(mod, p, (xb.unsqueeze(0),)), params)
        return pull(gb.unsqueeze(0).to(xb.dtype))[0]

    return vmap(one)(x.detach(), g)


class _Recorder:
    """Forward hooks on every leaf module that owns a selected parameter."""

    def __init__(self, model: nn.Module, params: dict[str, nn.Parameter]):
        ids = {id(p): n for n, p in params.items()}
        self.owned: dict[nn.Module, dict[str, str]] = {}
        covered = set()
        for mod in model.modules():
            own = {k: ids[id(p)] for k, p in mod.named_parameters(recurse=False) if id(p) in ids}
            if not own:
                continue
            if any(True for _ in mod.children()):
                raise UnsupportedModel(f"{type(mod).__name__} owns parameters and has children")
            self.owned[mod] = own
            covered.update(own.values())
        missing = set(params) - covered
        if missing:
            raise UnsupportedModel(f"parameters not owned by a leaf module: {sorted(missing)[:3]}")
        self.calls: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []
        self.handles = []
        self.batch_size = 0

    def __enter__(self):
        def hook(mod, args, output):
            if not args or not isinstance(args[0], torch.Tensor) or not isinstance(output, torch.Tensor):
                raise UnsupportedModel(f"{type(mod).__name__}: needs one tensor input and one tensor output")
            if not output.requires_grad:
                return None
            x = args[0]
            if output.shape[0] == 1 and self.batch_size > 1:
                # a module applied once and broadcast over the batch (e.g. position embeddings):
                # give each sample its own copy so its output gradient stays per-sample
                x = x.expand(self.batch_size, *x.shape[1:])
                output = output.expand(self.batch_size, *output.shape[1:])
            elif output.shape[0] != self.batch_size:
                raise UnsupportedModel(f"{type(mod).__name__}: output batch {output.shape[0]} != {self.batch_size}")
            self.calls.append((mod, x, output))
            return output

        self.handles = [m.register_forward_hook(hook) for m in self.owned]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.calls.clear()


def _vectorized_chunk(model, params: dict, encs, pad_id, device) -> dict[str, torch.Tensor]:
    rec = _Recorder(model, params)
    rec.batch_size = len(encs)
    with rec:
        batch = collate(encs, pad_id, device)
        loss, _ = forward_loss(model, batch)
        calls = list(rec.calls)
        gouts = torch.autograd.grad(loss.sum(), [c[2] for c in calls], allow_unused=True)
    # hooks are off from here: the generic path calls modules again
    result: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for (mod, x, _), g in zip(calls, gouts):
            if g is None:
                continue
            if isinstance(mod, nn.Linear):
                parts = _linear_grads(mod, x, g)
            elif isinstance(mod, nn.Embedding):
                parts = _embedding_grads(mod, x, g)
            else:
                with torch.enable_grad():  # (FSDP: the module's own small weights, gathered whole)
                    parts = _generic_grads(mod, x, g, {k: dist.full_tensor(getattr(mod, k)) for k in rec.owned[mod]})
            for k, v in parts.items():
                name = rec.owned[mod].get(k)
                if name is not None:
                    result[name] = result[name] + v if name in result else v
    B = len(encs)
    return {n: result.get(n, torch.zeros((B, *p.shape), dtype=p.dtype, device=p.device)).detach()
            for n, p in params.items()}


ENGINES = {"loop": _loop_chunk, "vectorized": _vectorized_chunk}


# ---------------------------------------------------------------- chunk size
def available_bytes(device) -> int:
    """Free memory of `device`: torch.cuda.mem_get_info on CUDA, MemAvailable (/proc/meminfo, else
    psutil) on the host."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return 4 << 30


def per_sample_bytes(model: nn.Module, params: dict, max_len: int, max_targets: int) -> int:
    """Estimated peak bytes one more sample adds to a chunk: its per-sample gradients of the selected
    parameters (32 B per element: float32 gradient + the float64 temporaries of the Fisher /
    confidence reductions), logits and their softmax / gradient at its kept positions (3 x 4 B x V),
    and the activations autograd keeps (about 20 floats of hidden and 8 of intermediate width per
    token and layer, plus one T x T attention map per head)."""
    c = getattr(model, "config", None)
    get = lambda k, d: int(getattr(c, k, None) or d)  # noqa: E731
    hidden, layers = get("hidden_size", 1024), get("num_hidden_layers", 12)
    inter, heads = get("intermediate_size", 4 * hidden), get("num_attention_heads", 16)
    vocab = get("vocab_size", 32000)
    grads = 32 * sum(p.numel() for p in params.values())
    logits = 12 * max(max_targets, 1) * vocab
    acts = 4 * layers * max_len * (20 * hidden + 8 * inter + heads * max_len)
    return int(grads + logits + acts)


def resolve_chunk_size(model: nn.Module, params: dict, encs: list, chunk_size, engine: str = "vectorized") -> int:
    """`chunk_size` itself, or for "auto" the number of samples whose estimated per-sample bytes
    (`per_sample_bytes`, at the longest sample) fit in half the free memory (logged), between 1 and 256."""
    if chunk_size != "auto":
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"grads.chunk_size must be an integer >= 1 or 'auto', not {chunk_size!r}")
        return chunk_size
    if engine == "loop":
        return 32  # the loop holds one sample's activations; a chunk only stacks its gradients
    device = next(model.parameters()).device
    max_len = max((len(e.input_ids) for e in encs), default=1)
    max_targets = max((sum(t != -100 for t in e.labels) for e in encs), default=1)
    each = per_sample_bytes(model, params, max_len, max_targets)
    free = available_bytes(device)
    n = max(1, min(256, int(0.5 * free // max(each, 1)), len(encs) or 1))
    _log_once("grads.chunk_size auto: %d samples per chunk (%.1f GB free on %s, about %.0f MB per sample of up to "
              "%d tokens)", n, free / 1e9, device, each / 1e6, max_len)
    return n


PAD_SLACK = 1.2  # a chunk of length-sorted samples grows while its padded tokens <= 1.2 x its real tokens


def length_chunks(lengths: list[int], chunk_size: int, slack: float = PAD_SLACK) -> list[list[int]]:
    """Sample indices sorted by length (stable), cut into chunks of at most `chunk_size` whose padded
    size (count x longest) stays within `slack` x their real tokens: a long outlier gets a chunk of
    its own instead of padding seven short samples to its length."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    chunks, cur, tokens = [], [], 0
    for i in order:
        n = lengths[i]
        if cur and (len(cur) >= chunk_size or (len(cur) + 1) * n > slack * (tokens + n)):
            chunks.append(cur)
            cur, tokens = [], 0
        cur.append(i)
        tokens += n
    return chunks + [cur] if cur else chunks


def iter_per_sample_grads(model: nn.Module, encs: list, pad_id: int, engine: str = "vectorized",
                          chunk_size: int | str = 32, param_regex: str | None = None,
                          progress: Iterable | None = None, embeddings: str = "auto",
                          ) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Yield (idx, {param name: per-sample gradient [len(idx), *shape]}) chunk by chunk: row j is the
    gradient of sample encs[idx[j]] (idx: a CPU LongTensor). Every sample comes exactly once.

    The vectorised engine takes the samples sorted by length, in chunks of at most `chunk_size` that
    pad at most PAD_SLACK x their real tokens (`length_chunks`); the loop takes them in order. Callers index their results by `idx`.
    Gradients are of `per_sample_loss` (mean target-token NLL of each sequence) at the model's
    current parameters. The model is put in eval mode (no dropout) and left there.
    """
    model.eval()
    params = select_params(model, param_regex, embeddings)
    device = next(model.parameters()).device
    fn = ENGINES[engine]
    if engine == "vectorized":
        try:
            _Recorder(model, params)
        except UnsupportedModel as e:
            log.warning("vectorised per-sample gradients unsupported (%s); using the loop engine", e)
            fn = _loop_chunk
    if fn is _loop_chunk and dist.is_fsdp(model):
        raise ValueError("the loop per-sample-gradient engine needs whole parameters: under launch.strategy "
                         "'fsdp' use grads.engine 'vectorized' (it never reads the weights of nn.Linear layers)")
    chunk_size = resolve_chunk_size(model, params, encs, chunk_size, "loop" if fn is _loop_chunk else "vectorized")
    if fn is _vectorized_chunk:
        chunks = length_chunks([len(e.input_ids) for e in encs], chunk_size)
    else:
        chunks = [list(range(s, min(s + chunk_size, len(encs)))) for s in range(0, len(encs), chunk_size)]
    for idx in chunks:
        yield torch.tensor(idx, dtype=torch.long), fn(model, params, [encs[i] for i in idx], pad_id, device)
        if progress is not None:
            progress.update(len(idx))


def ascent_direction(model, tok, rows: list[dict], max_length: int, add_bos: bool = True):
    """(mean l over `rows`, its gradient flattened over all parameters): the direction a GA
    unlearning step on that batch ascends (the mechanism tests compare with it)."""
    batch = collate(encode_rows(tok, rows, max_length, add_bos), tok.pad_token_id, next(model.parameters()).device)
    model.zero_grad(set_to_none=True)
    loss = forward_loss(model, batch)[0].mean()
    loss.backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    model.zero_grad(set_to_none=True)
    return loss.item(), grad
