"""The one per-sample-gradient engine. Fisher (`fisher.py`) and confidence (`confidence.py`) are
small reductions over what `iter_per_sample_grads` yields, so they cannot drift apart.

Two engines give the same numbers (tested to 1e-5 relative):

- ``loop``: one forward/backward per sample, `torch.autograd.grad` w.r.t. the parameters.
  The reference, and the fallback for models with layers the vectorised engine does not know.
- ``vectorized``: ONE forward and ONE backward per chunk. Forward hooks record each parametrised
  leaf module's input; the backward asks only for the gradients of those modules' *outputs*
  (no parameter-gradient GEMMs at all), and per-sample parameter gradients are formed from
  (input, output-gradient) pairs, the Opacus/BackPACK way:
    nn.Linear     dW_b = sum_t g_bt a_bt^T (one batched einsum), db_b = sum_t g_bt
    nn.Embedding  dE_b = scatter-add of g_bt into the rows of the tokens of sample b
    other leaves  (RMSNorm, LayerNorm, ...) torch.func.vmap of the module's own VJP.
  This is exact because the loss is a sum of per-sample losses and no layer mixes samples
  (right padding + causal attention keep padding out of every real position).

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
from .data import collate, forward_loss

log = logging.getLogger("lwf")


def select_params(model: nn.Module, regex: str | None = None) -> dict[str, nn.Parameter]:
    """Trainable parameters (optionally those whose name matches `regex`), by name."""
    pat = re.compile(regex) if regex else None
    out = {n: p for n, p in model.named_parameters() if p.requires_grad and (pat is None or pat.search(n))}
    if not out:
        raise ValueError(f"grads.param_regex={regex!r} selects no trainable parameter")
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
    out = {"weight": torch.einsum("bto,bti->boi", g, a)}
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


def iter_per_sample_grads(model: nn.Module, encs: list, pad_id: int, engine: str = "vectorized",
                          chunk_size: int = 32, param_regex: str | None = None,
                          progress: Iterable | None = None) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """Yield (start index, {param name: per-sample gradient [chunk, *shape]}) chunk by chunk.

    Gradients are of `per_sample_loss` (mean target-token NLL of each sequence) at the model's
    current parameters. The model is put in eval mode (no dropout) and left there.
    """
    model.eval()
    params = select_params(model, param_regex)
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
    for start in range(0, len(encs), chunk_size):
        chunk = encs[start:start + chunk_size]
        yield start, fn(model, params, chunk, pad_id, device)
        if progress is not None:
            progress.update(len(chunk))
