"""Tokenisation, batching and the one loss everyone uses.

Loss convention (method.md): l(x, y; theta) = mean negative log-likelihood of the target
tokens of ONE sequence, prompt tokens masked out. `per_sample_loss` returns that per row; the
training loss is its batch mean, the Fisher and the confidence use it per sample.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100


class TooLongError(ValueError):
    """A row that does not fit `data.max_length` (reported to the user, not silently cut)."""


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]


def format_prompt(tok, prompt: str) -> str:
    """The prompt as the model sees it: wrapped in the tokenizer's chat template when
    `model.chat_template` is on (then the template supplies any BOS), else unchanged."""
    if prompt and getattr(tok, "lwf_chat", False):
        return tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True)
    return prompt


def prompt_ids(tok, prompt: str, add_bos: bool = True) -> list[int]:
    """Token ids of [bos] + the formatted prompt: the model's input before any target, shared by
    training/scoring (`encode`) and generation (`pipeline.generation`)."""
    ids = tok(format_prompt(tok, prompt), add_special_tokens=False)["input_ids"] if prompt else []
    add_bos = add_bos and not getattr(tok, "lwf_chat", False)
    return ([tok.bos_token_id] if add_bos and tok.bos_token_id is not None else []) + ids


def encode(tok, prompt: str, target: str, max_length: int, add_bos: bool = True, add_eos: bool = True) -> Encoded:
    """[bos] prompt target [eos]; labels only on target (+eos); plain text (no prompt) predicts
    every token after bos. A row longer than `max_length` raises `TooLongError` (silently cutting
    prompts would change what the model is asked)."""
    head = prompt_ids(tok, prompt, add_bos)
    t = tok(target, add_special_tokens=False)["input_ids"] if target else []
    if add_eos:
        t = t + [tok.eos_token_id]
    n = len(head) + len(t)
    if n > max_length:
        raise TooLongError(f"data.max_length = {max_length} is shorter than a row of {n} tokens "
                           f"(prompt {prompt[:40]!r}, target {target[:20]!r}); raise data.max_length")
    return Encoded(head + t, [IGNORE] * len(head) + t)


def encode_rows(tok, rows, max_length: int, add_bos: bool = True) -> list[Encoded]:
    return [
        encode(tok, r["prompt"], r["target"], max_length, add_bos, add_eos=r.get("add_eos", True))
        for r in rows
    ]


def collate(encs: list[Encoded], pad_id: int, device=None) -> dict:
    """Right-padded batch (causal attention: padding never changes a real position's output)."""
    n = max(len(e.input_ids) for e in encs)
    ids = torch.full((len(encs), n), pad_id, dtype=torch.long)
    lab = torch.full((len(encs), n), IGNORE, dtype=torch.long)
    att = torch.zeros((len(encs), n), dtype=torch.long)
    for i, e in enumerate(encs):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        lab[i, : len(e.labels)] = torch.tensor(e.labels)
        att[i, : len(e.input_ids)] = 1
    out = {"input_ids": ids, "labels": lab, "attention_mask": att}
    return {k: v.to(device) for k, v in out.items()} if device is not None else out


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL (B, T-1) of the shifted labels and the mask of counted tokens."""
    return kept_token_nll(logits[:, :-1], labels[:, 1:])


def kept_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL (B, K) of logits (B, K, V) that predict `labels` (B, K; IGNORE = not counted)."""
    mask = labels != IGNORE
    logp = logits.float().log_softmax(-1)  # over the contiguous last dim (a transposed copy is slower)
    nll = -logp.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return nll * mask, mask


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """l(x, y) per row: mean NLL over that row's target tokens, shape (B,)."""
    nll, mask = token_nll(logits, labels)
    return nll.sum(1) / mask.sum(1).clamp_min(1)


def target_positions(labels: torch.Tensor, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions whose logits predict a target token, per row, right-padded to the longest
    row's count: (positions (B, K), their labels (B, K), IGNORE on the padding slots). `k`: that
    count where the caller knows it (then the labels' values are not read: fake tensors)."""
    nxt = labels[:, 1:]
    mask = nxt != IGNORE
    if k is None:
        k = max(int(mask.sum(1).max()) if mask.numel() else 0, 1)
    # stable sort puts each row's target positions first, in order
    pos = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :k]
    keep = torch.gather(mask, 1, pos)
    lab = torch.where(keep, torch.gather(nxt, 1, pos), torch.full_like(pos, IGNORE))
    return pos, lab


_KEEPS: dict[type, bool] = {}


def _accepts_logits_to_keep(model) -> bool:
    """Whether the (unwrapped: DDP, PEFT) model's forward takes `logits_to_keep` (most HF causal LMs)."""
    import inspect

    m = model
    for _ in range(4):
        if hasattr(m, "get_base_model"):
            m = m.get_base_model()
        elif hasattr(m, "module") and isinstance(getattr(m, "module"), torch.nn.Module):
            m = m.module
        else:
            break
    t = type(m)
    if t not in _KEEPS:
        try:
            _KEEPS[t] = "logits_to_keep" in inspect.signature(m.forward).parameters
        except (TypeError, ValueError):
            _KEEPS[t] = False
    return _KEEPS[t]


def forward_token_nll(model, batch, output_hidden_states: bool = False):
    """(per-token NLL (B, K) of each row's target tokens, their mask (B, K), the model output).
    Logits are computed only at the positions that predict a target token (`logits_to_keep` with
    per-row positions, for models that accept it): over a large vocabulary the output projection
    and softmax at prompt and padding positions are most of the work otherwise. `out.logits` is
    then (B, K, V) over those positions."""
    kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
              output_hidden_states=output_hidden_states, use_cache=False)
    if _accepts_logits_to_keep(model):
        pos, lab = target_positions(batch["labels"])
        out = model(**kw, logits_to_keep=pos)
        nll, mask = kept_token_nll(out.logits, lab)
        return nll, mask, out
    out = model(**kw)
    nll, mask = token_nll(out.logits, batch["labels"])
    return nll, mask, out


def forward_loss(model, batch, output_hidden_states: bool = False):
    """(per-row loss l(x, y) (B,): the mean target-token NLL, the model output); see `forward_token_nll`."""
    nll, mask, out = forward_token_nll(model, batch, output_hidden_states)
    return nll.sum(1) / mask.sum(1).clamp_min(1), out


@torch.no_grad()
def sequence_nlls(model, encs: list[Encoded], pad_id: int, batch_size: int = 64, desc: str | None = None) -> torch.Tensor:
    """l(x, y) of every encoded row (float64, on the model's device), in batches of similar
    lengths (less padding), no gradients; in the order of `encs`. `desc`: show a progress bar so named."""
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(encs)), key=lambda i: len(encs[i].input_ids))
    out = torch.zeros(len(encs), dtype=torch.float64, device=device)
    with progress_bar(len(encs), desc) as bar:
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            out[torch.tensor(idx, device=device)] = forward_loss(model, collate([encs[j] for j in idx], pad_id, device))[0].double()
            bar.update(len(idx))
    return out


def progress_bar(total: int, desc: str | None):
    """A tqdm bar over `total` rows, shown when `desc` is given, on the main process only, at most
    every 2 s (the stages' long loops over rows and batches)."""
    from tqdm import tqdm

    from . import dist

    return tqdm(total=total, desc=desc, mininterval=2, leave=False, disable=desc is None or not dist.is_main())


def batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


class Stream:
    """Endless seeded shuffles of range(n); batch k is a pure function of k (resumable)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        if n <= 0:
            raise ValueError("cannot draw batches from an empty set")
        self.n, self.bs, self.seed = n, batch_size, seed
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g).tolist()}
        return self._perms[epoch]

    def batch(self, k: int) -> list[int]:
        out = []
        for pos in range(k * self.bs, (k + 1) * self.bs):
            out.append(self._perm(pos // self.n)[pos % self.n])
        return out


def n_target_tokens(enc) -> int:
    """Target tokens of one encoded row that the loss counts (labels shifted by one, as `token_nll`)."""
    return sum(lab != IGNORE for lab in enc.labels[1:])


@torch.no_grad()
def reference_nll_sums(model, encs: list, pad_id: int, batch_size: int = 64) -> torch.Tensor:
    """S_ref per row: the summed target-token NLL under `model` (float64, CPU), no gradients."""
    was_training = model.training
    mean = sequence_nlls(model, encs, pad_id, batch_size).cpu()
    model.train(was_training)
    return mean * torch.tensor([n_target_tokens(e) for e in encs], dtype=torch.float64)


def given_reference_sums(rows: list[dict], encs: list) -> torch.Tensor | None:
    """S_ref per row from the rows' own `ref_nll` (mean token NLL under the reference model, e.g. the
    confidence table's `nll_base`) times the row's target-token count; None unless every row has it."""
    if not all("ref_nll" in r for r in rows):
        return None
    n = torch.tensor([n_target_tokens(e) for e in encs], dtype=torch.float64)
    return torch.tensor([float(r["ref_nll"]) for r in rows], dtype=torch.float64) * n
