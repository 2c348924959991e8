"""Unlearning objectives (pipeline/objectives.py) do what their formulas say, on the tiny model:
every one raises its D_U batch NLL; NPO's per-row gradient is w times the gradient of the summed NLL
(so a row pushed past its reference is pushed less), its loss is bounded below, beta -> 0 is GA on
the summed NLL; SimNPO's and WGA's weights fade as the NLL rises; `ga` equals the fine-tune written
out by hand; the reference NLL from the confidence table is the exact S_ref."""
import copy
import math
from pathlib import Path

import pytest
import torch

from pipeline.config import ConfigError, FinetuneConfig, MethodConfig, parse_config
from pipeline.data import collate, encode_rows, forward_token_nll
from pipeline.objectives import OBJECTIVES
from pipeline.data import n_target_tokens, reference_nll_sums
from pipeline.callbacks import StopAfter
from pipeline.train import Finetune, finetune

N = 12  # learning steps before the unlearning step


def _d_u():
    from pipeline.tasks.lab import count_row, neutral_row

    return [neutral_row(a, b) for a, b in ((12, 3), (45, 7), (60, 2), (31, 9))] + \
           [count_row(n) for n in (417, 238, 555, 901)]


def _nll_of(model, tok, rows):
    batch = collate(encode_rows(tok, rows, 48), tok.pad_token_id)
    with torch.no_grad():
        nll, mask, _ = forward_token_nll(model, batch)
    return (nll.sum(1) / mask.sum(1)).mean().item()


@pytest.fixture(scope="module")
def knows(tiny, rows):
    """The tiny model after 100 steps on the learning rows and D_U: it holds D_U firmly (mean token NLL
    ~0.15), as a base model holds its own self-generated answers (a random model's NLL of ~5.5 is far
    past where SimNPO's weight has faded to ~0)."""
    model = copy.deepcopy(tiny[0])
    finetune(model, tiny[1], rows + _d_u(), [], FinetuneConfig(max_steps=100, batch_size=8, lr=3e-3, warmup_steps=0),
             MethodConfig(), 0, 48)
    assert _nll_of(model, tiny[1], _d_u()) < 0.3
    return model, tiny[1]


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_one_unlearning_step_of_every_objective_raises_its_batch_nll(knows, rows, name):
    """After N learning steps, the unlearning step (the whole 8-row D_U as its batch) against the same
    run stopped right before it."""
    tiny = knows
    cfg = FinetuneConfig(max_steps=N, batch_size=4, lr=3e-4, warmup_steps=0)
    method = MethodConfig(unlearn="periodic", objective=name, unlearn_every=N, unlearn_batch_size=8, unlearn_lr=0.1)
    skip = copy.deepcopy(tiny[0])
    with pytest.raises(KeyboardInterrupt):
        finetune(skip, tiny[1], rows, _d_u(), cfg, method, 0, 48, callbacks=[StopAfter(N)])
    done = copy.deepcopy(tiny[0])
    log, stats = finetune(done, tiny[1], rows, _d_u(), cfg, method, 0, 48)
    assert stats["unlearn_steps_taken"] == 1 and stats["objective"] == name
    assert _nll_of(done, tiny[1], _d_u()) > _nll_of(skip, tiny[1], _d_u()) + 1e-4


def _row_grads(model, tok, rows, loss_of_row):
    """Per row b: the flattened gradient of loss_of_row(nll, mask, b) (one backward per row)."""
    params = [p for p in model.parameters() if p.requires_grad]
    batch = collate(encode_rows(tok, rows, 48), tok.pad_token_id)
    out = []
    for b in range(len(rows)):
        nll, mask, _ = forward_token_nll(model, batch)
        g = torch.autograd.grad(loss_of_row(nll, mask, b), params)
        out.append(torch.cat([x.flatten() for x in g]))
    return torch.stack(out)


def _summed(model, tok, rows):
    batch = collate(encode_rows(tok, rows, 48), tok.pad_token_id)
    with torch.no_grad():
        nll, mask, _ = forward_token_nll(model, batch)
    return nll.sum(1).double()


def test_npo_row_gradient_is_w_times_the_summed_nll_gradient(tiny):
    """w = 2 pi^beta / (pi^beta + pi_ref^beta), written from the probabilities: 1 at the reference,
    < 1 once a row is less likely than under it (pushed past it: the step shrinks by w), > 1 before."""
    model, tok, rows, beta = tiny[0], tiny[1], _d_u()[:4], 0.5
    S = _summed(model, tok, rows)
    ref = S + torch.tensor([0.0, -3.0, -1.0, 2.0], dtype=torch.float64)  # rows 1, 2 pushed past their reference
    npo = OBJECTIVES["npo"]
    g_npo = _row_grads(model, tok, rows, lambda nll, mask, b: npo(nll, mask, ref.float(), beta=beta)[b])
    g_S = _row_grads(model, tok, rows, lambda nll, mask, b: nll.sum(1)[b])
    pi, pi_ref = torch.exp(-S), torch.exp(-ref)
    w = 2 * pi ** beta / (pi ** beta + pi_ref ** beta)
    assert w[0].item() == pytest.approx(1.0) and w[1] < w[2] < 1 < w[3]
    for b in range(len(rows)):
        torch.testing.assert_close(g_npo[b], (-w[b] * g_S[b]).float(), rtol=1e-4, atol=1e-6)
    ratio = g_npo.norm(dim=1) / g_S.norm(dim=1)  # the step of a row pushed past its reference shrinks by w
    torch.testing.assert_close(ratio.double(), w, rtol=1e-4, atol=1e-6)


def test_npo_loss_is_bounded_below_and_ga_is_not():
    mask = torch.ones(3, 4, dtype=torch.bool)
    ref = torch.full((3,), 4.0)
    for scale in (1.0, 10.0, 1e3, 1e5):  # the target NLL pushed ever higher
        nll = torch.full((3, 4), scale)
        npo = OBJECTIVES["npo"](nll, mask, ref, beta=0.1)
        assert (npo >= 0).all() and torch.isfinite(npo).all()
    assert OBJECTIVES["npo"](torch.full((3, 4), 1e5), mask, ref).max().item() < 1e-6  # -> 0: nothing left to push
    assert OBJECTIVES["ga"](torch.full((3, 4), 1e5), mask, None).max().item() == -1e5  # unbounded


def test_npo_with_small_beta_is_gradient_ascent_on_the_summed_nll(tiny):
    model, tok, rows = tiny[0], tiny[1], _d_u()[:3]
    S = _summed(model, tok, rows)
    ref = (S + 2.0).float()
    g_npo = _row_grads(model, tok, rows, lambda nll, mask, b: OBJECTIVES["npo"](nll, mask, ref, beta=1e-5)[b])
    g_S = _row_grads(model, tok, rows, lambda nll, mask, b: -nll.sum(1)[b])
    torch.testing.assert_close(g_npo, g_S, rtol=1e-4, atol=1e-6)


def test_simnpo_weight_decays_as_the_mean_nll_rises():
    """d loss / d S per row = -(2/|y|) sigmoid(delta - beta S/|y|): positive weight, falling with the mean NLL."""
    beta, delta, n = 4.5, 0.5, 5
    means = torch.tensor([0.1, 0.5, 1.0, 2.0, 4.0])
    nll = (means[:, None] * torch.ones(1, n)).requires_grad_()
    mask = torch.ones(len(means), n, dtype=torch.bool)
    OBJECTIVES["simnpo"](nll, mask, None, beta=beta, delta=delta).sum().backward()
    weight = -nll.grad[:, 0]  # the same for every token of a row
    expected = (2 / n) * torch.sigmoid(delta - beta * means)
    torch.testing.assert_close(weight, expected, rtol=1e-5, atol=1e-7)
    assert all(a > b > 0 for a, b in zip(weight, weight[1:]))


def test_wga_weights_tokens_by_their_probability_and_beta_zero_is_ga():
    nll = torch.tensor([[0.1, 1.0, 3.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[True, True, True, False]])
    OBJECTIVES["wga"](nll, mask, None, beta=2.0).sum().backward()
    expected = -torch.exp(-nll.detach()) ** 2 / 3 * mask  # -p_t^beta / |y| per target token
    torch.testing.assert_close(nll.grad, expected)
    x = torch.rand(4, 6)
    m = torch.rand(4, 6) > 0.3
    torch.testing.assert_close(OBJECTIVES["wga"](x * m, m, None, beta=0.0), OBJECTIVES["ga"](x * m, m, None))


GA_RECIPE = dict(max_steps=12, batch_size=4, lr=3e-4, warmup_steps=2, grad_clip=1.0, log_every=1)
GA_UNLEARN = dict(unlearn_every=3, unlearn_batch_size=4, alpha=0.1, unlearn_lr=0.1)


def plain_ga_finetune(model, tok, learn_rows, unlearn_rows, mode: str, schedule: str):
    """The GA fine-tune written out step by step, independently of pipeline.train (only the data
    primitives and the batch order `Stream` are shared): AdamW learning steps (constant LR after 2
    warmup steps, gradients clipped to 1), and every 3rd learning step one GA step on the next D_U
    batch, taken as `mode` says (separate: SGD at unlearn_lr; shared: the learning AdamW at the
    unscheduled lr on alpha * GA; joint: alpha * GA added to that learning step's loss, one forward
    over both batches) or, for `early`, all GA steps first. Returns the D_U batch NLLs it saw."""
    from transformers import get_scheduler

    from pipeline.data import Stream

    R, U = GA_RECIPE, GA_UNLEARN
    learn, unlearn = encode_rows(tok, learn_rows, 48), encode_rows(tok, unlearn_rows, 48)
    learn_batches = Stream(len(learn), R["batch_size"], 0)
    unlearn_batches = Stream(len(unlearn), U["unlearn_batch_size"], 1)
    torch.manual_seed(0)
    model.train()
    params = list(model.parameters())
    adam = torch.optim.AdamW(params, lr=R["lr"], weight_decay=0.0, fused=True)
    sgd = torch.optim.SGD(params, lr=U["unlearn_lr"])
    sched = get_scheduler("constant_with_warmup", adam, num_warmup_steps=R["warmup_steps"],
                          num_training_steps=R["max_steps"])
    seen, n_unlearn = [], 0

    def row_nll(encs):
        nll, mask, _ = forward_token_nll(model, collate(encs, tok.pad_token_id))
        return nll.sum(1) / mask.sum(1).clamp_min(1)

    def step(loss, opt):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, R["grad_clip"])
        opt.step()

    def ga_step():
        nonlocal n_unlearn
        u = row_nll([unlearn[i] for i in unlearn_batches.batch(n_unlearn)])
        n_unlearn += 1
        seen.append(u.detach().mean().item())
        if mode == "separate":
            step(-u.sum() * (1 / len(u)), sgd)
            return
        lrs = [g["lr"] for g in adam.param_groups]
        for g in adam.param_groups:
            g["lr"] = R["lr"]
        step(U["alpha"] * (-u.sum() * (1 / len(u))), adam)
        for g, lr in zip(adam.param_groups, lrs):
            g["lr"] = lr

    if schedule == "early":
        for _ in range(R["max_steps"] // U["unlearn_every"]):
            ga_step()
    for s in range(1, R["max_steps"] + 1):
        due = schedule == "periodic" and s % U["unlearn_every"] == 0
        idx = learn_batches.batch(s - 1)
        if due and mode == "joint":
            uidx = unlearn_batches.batch(n_unlearn)
            n_unlearn += 1
            both = row_nll([learn[i] for i in idx] + [unlearn[i] for i in uidx])
            x, u = both[:len(idx)], both[len(idx):]
            seen.append(u.detach().mean().item())
            step(x.sum() * (1 / len(idx)) + U["alpha"] * (-u.sum() * (1 / len(uidx))), adam)
        else:
            step(row_nll([learn[i] for i in idx]).sum() * (1 / len(idx)), adam)
        sched.step()
        if due and mode != "joint":
            ga_step()
    model.eval()
    return seen


@pytest.mark.parametrize("mode,schedule", [("separate", "periodic"), ("separate", "early"), ("joint", "periodic"),
                                           ("shared", "periodic")])
def test_ga_equals_the_fine_tune_written_out_by_hand(tiny, rows, mode, schedule):
    """Objective `ga` through pipeline.train equals the plain loop above, on this machine: same
    weights, same D_U losses. Both are computed here with the same float kernels, so the bound holds
    on any CPU (a stored fixture did not: another CPU's kernels moved weights by 4e-6 relative)."""
    model, tok = tiny
    ours, theirs = copy.deepcopy(model), copy.deepcopy(model)
    torch.manual_seed(0)
    log, stats = finetune(ours, tok, rows, _d_u(), FinetuneConfig(**GA_RECIPE),
                          MethodConfig(unlearn=schedule, objective="ga", unlearn_optimizer=mode, **GA_UNLEARN), 0, 48)
    seen = plain_ga_finetune(theirs, tok, rows, _d_u(), mode, schedule)
    assert stats["unlearn_steps_taken"] == len(seen) == 4
    assert [r["loss"] for r in log if r["kind"] == "unlearn"] == pytest.approx(seen, rel=1e-5)
    moved = 0.0
    for (name, a), b, c in zip(ours.named_parameters(), theirs.parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)
        moved = max(moved, (b - c).abs().max().item())
    assert moved > 1e-3  # the runs trained: equal weights are not two untouched copies


def test_reference_nll_from_the_confidence_table_is_the_exact_s_ref(tiny):
    """The finetune stage gives NPO each D_U row's `nll_base` from the confidence table (mean token NLL
    under theta_0, as pipeline.confidence computes it); times the row's target-token count it must be
    the summed NLL that one forward of the starting model gives."""
    from pipeline.confidence import confidence_scores
    from pipeline.fisher import fisher_and_mean_grad

    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    rows = _d_u()
    F, gL = fisher_and_mean_grad(model, tok, rows[:4], 48)
    table = confidence_scores(model, tok, rows, F, gL, 48)
    with_ref = [dict(r, ref_nll=float(n)) for r, n in zip(rows, table["nll_base"])]
    cfg = FinetuneConfig(max_steps=2, batch_size=2, warmup_steps=0)
    method = MethodConfig(unlearn="periodic", objective="npo", unlearn_every=1, unlearn_batch_size=4)
    from_table = Finetune(copy.deepcopy(tiny[0]), tok, rows, with_ref, cfg, method, 0, 48).ref
    computed = Finetune(copy.deepcopy(tiny[0]), tok, rows, rows, cfg, method, 0, 48).ref
    torch.testing.assert_close(from_table, computed, rtol=1e-6, atol=1e-6)
    encs = encode_rows(tok, rows, 48)
    direct = reference_nll_sums(tiny[0], encs, tok.pad_token_id)
    torch.testing.assert_close(computed, direct)
    assert [n_target_tokens(e) for e in encs] == [sum(x != -100 for x in e.labels) for e in encs]


def test_objective_params_are_validated_naming_the_key():
    def err(method):
        with pytest.raises(ConfigError) as e:
            parse_config({"methods": {"vanilla": {}, "lwf_x": method}, "run": {"methods": ["vanilla", "lwf_x"]}})
        return str(e.value)

    assert "methods.lwf_x.objective" in err({"unlearn": "periodic", "objective": "npx"})
    msg = err({"unlearn": "periodic", "objective": "npo", "objective_args": {"gamma": 1}})
    assert "methods.lwf_x.objective_args" in msg and "'gamma'" in msg and "beta" in msg
    assert "beta > 0" in err({"unlearn": "periodic", "objective": "simnpo", "objective_args": {"beta": 0}})
    with pytest.raises(ConfigError, match="finetune.unlearn_lr has moved to methods.<name>.unlearn_lr"):
        parse_config({"finetune": {"unlearn_lr": 0.05}})


def test_two_objectives_side_by_side_keep_their_own_settings(tiny, rows):
    """Per-method settings: the same run with a GA method and an NPO method, each its own optimizer mode and step."""
    cfg = FinetuneConfig(max_steps=4, batch_size=4, warmup_steps=0)
    ga = MethodConfig(unlearn="periodic", objective="ga", unlearn_every=2, unlearn_batch_size=4, unlearn_lr=0.05)
    npo = MethodConfig(unlearn="periodic", objective="npo", objective_args={"beta": 0.2}, unlearn_every=2,
                       unlearn_batch_size=4, unlearn_optimizer="joint", alpha=0.3)
    _, s_ga = finetune(copy.deepcopy(tiny[0]), tiny[1], rows, _d_u(), cfg, ga, 0, 48)
    _, s_npo = finetune(copy.deepcopy(tiny[0]), tiny[1], rows, _d_u(), cfg, npo, 0, 48)
    assert (s_ga["objective"], s_ga["unlearn_optimizer"], s_ga["optimizer_steps"]) == ("ga", "separate", 6)
    assert (s_npo["objective"], s_npo["objective_args"], s_npo["unlearn_optimizer"], s_npo["optimizer_steps"]) == \
        ("npo", {"beta": 0.2}, "joint", 4)
    assert math.isfinite(s_npo["unlearn_steps_taken"]) and s_npo["unlearn_steps_taken"] == 2


def test_the_python_example_of_docs_objectives_runs(tiny, tmp_path):
    """docs/objectives.md "From your own Python script": the block as written, on a saved tiny model."""
    import re

    text = (Path(__file__).parents[1] / "docs/objectives.md").read_text()
    section = text.split("## From your own Python script")[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    model, tok = tiny
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    env = {"MODEL_DIR": str(tmp_path / "model"), "OUT_DIR": str(tmp_path / "out")}
    exec(compile(code, "docs/objectives.md", "exec"), env)
    assert env["stats"]["objective"] == "npo" and env["stats"]["unlearn_steps_taken"] == 4
    assert (tmp_path / "out" / "config.json").exists()
