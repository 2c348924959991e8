"""The published forgetting confidence (score optimum_distance) against brute force on a tiny model:
FC(x) = 1/2 sum_i F_L,i (theta_base,i - alpha g_x,i - theta*_L,i)^2 from explicit parameter vectors."""
import copy

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.config import OptimumConfig, parse_config
from pipeline.confidence import confidence_scores
from pipeline.data import collate, encode_rows, forward_loss
from pipeline.fisher import fisher_and_mean_grad
from pipeline.optimum import optimum_delta, plain_finetune

SAMPLES = [" rome", " oslo", "", " xyz", " lima", " a b c d"]


def brute_grads(model, tok, rows, max_length=48):
    """Per-sample gradients, one sample at a time, with .backward(), as one flat float64 vector each."""
    out = []
    for e in encode_rows(tok, rows, max_length):
        model.zero_grad()
        forward_loss(model, collate([e], tok.pad_token_id))[0].sum().backward()
        out.append(torch.cat([p.grad.detach().double().flatten() for p in model.parameters()]))
    model.zero_grad()
    return out


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().double().flatten() for p in model.parameters()])


def samples(rows):
    return [{"prompt": r["prompt"], "target": t} for r, t in zip(rows[: len(SAMPLES)], SAMPLES)]


@pytest.fixture(scope="module")
def setting(tiny, rows):
    """theta_base, theta*_L (a plain fine-tune of a copy), F_L at theta*_L, per-sample gradients at theta_base."""
    model, tok = tiny
    star = copy.deepcopy(model)
    o = OptimumConfig(steps=5, lr=1e-2, batch_size=4, warmup_steps=1, seed=3)
    names = [n for n, _ in model.named_parameters()]
    delta, theta, _ = optimum_delta(star, tok, rows, o, 48, True, names)
    F_L, _ = fisher_and_mean_grad(star, tok, rows, 48)
    F, gL = fisher_and_mean_grad(model, tok, rows, 48)
    return model, tok, star, delta, F, gL, F_L


def test_optimum_distance_equals_the_formula_on_explicit_vectors(setting, rows):
    model, tok, star, delta, F, gL, F_L = setting
    theta_base, theta_star = flat(model), flat(star)
    f = torch.cat([F_L[n].double().flatten() for n, _ in model.named_parameters()])
    assert torch.allclose(torch.cat([delta[n].flatten() for n, _ in model.named_parameters()]), theta_star - theta_base)
    alpha = 0.3
    df = confidence_scores(model, tok, samples(rows), F, gL, 48, chunk_size=4, optimum=delta, alpha=alpha, fisher_L=F_L)
    quad_part = []
    for i, g in enumerate(brute_grads(model, tok, samples(rows))):
        ref = 0.5 * (f * (theta_base - alpha * g - theta_star) ** 2).sum()
        assert df.loc[i, "score_optimum_distance"] == pytest.approx(float(ref), rel=1e-5), i
        quad_part.append(float(0.5 * alpha ** 2 * (f * g * g).sum()))
    # the test can see each term: the quadratic and the directional parts both move the score
    spread = df["score_optimum_distance"].max() - df["score_optimum_distance"].min()
    assert np.ptp(quad_part) > 1e-3 * spread and np.ptp(alpha * df["opt_directional"]) > 1e-3 * spread
    # with F at theta_base instead (fisher.at: base) it is another number (the test tells the two apart)
    base = confidence_scores(model, tok, samples(rows), F, gL, 48, optimum=delta, alpha=alpha)
    assert not np.allclose(base["score_optimum_distance"], df["score_optimum_distance"], rtol=1e-3)


def test_sample_dependent_share_equals_brute_force(setting, rows):
    """opt_sample_share = (FC(x) - FC at g_x = 0) / FC(x), FC evaluated on explicit parameter vectors
    (theta*(x) = theta_base - alpha g_x vs theta_base itself), and the stage metrics' constant is
    FC at g_x = 0: 1/2 sum F_L (theta_base - theta*_L)^2. An alpha where the share is not tiny, and
    one where the constant is nearly all of the score (today's lab: the test tells the two apart)."""
    from pipeline.confidence import published_form_stats

    model, tok, star, delta, F, gL, F_L = setting
    theta_base, theta_star = flat(model), flat(star)
    f = torch.cat([F_L[n].double().flatten() for n, _ in model.named_parameters()])
    const = float(0.5 * (f * (theta_base - theta_star) ** 2).sum())
    per = brute_grads(model, tok, samples(rows))
    for alpha in (0.3, 1e-4):
        df = confidence_scores(model, tok, samples(rows), F, gL, 48, chunk_size=4, optimum=delta, alpha=alpha,
                               fisher_L=F_L)
        ref = []
        for i, g in enumerate(per):
            full = float(0.5 * (f * (theta_base - alpha * g - theta_star) ** 2).sum())
            ref.append((full - const) / full)
            assert df.loc[i, "opt_sample_part"] == pytest.approx(full - const, rel=1e-4, abs=1e-12 * const), (alpha, i)
        assert df["opt_sample_share"].to_numpy() == pytest.approx(ref, rel=1e-4, abs=1e-9), alpha
        stats = published_form_stats(df)
        assert stats["constant"] == pytest.approx(const, rel=1e-6)
        assert stats["sample_share_median"] == pytest.approx(float(np.median(ref)), rel=1e-4, abs=1e-9)
        assert stats["sample_share_abs_median"] == pytest.approx(float(np.median(np.abs(ref))), rel=1e-4, abs=1e-9)
        if alpha == 0.3:
            assert stats["sample_share_abs_median"] > 0.05
        else:
            assert stats["sample_share_abs_median"] < 0.05


def _order(x) -> list[int]:
    return list(np.argsort(np.asarray(x), kind="stable"))


def test_small_alpha_ranks_like_the_directional_term_large_alpha_like_the_sample_size(setting, rows):
    model, tok, star, delta, F, gL, F_L = setting
    f = torch.cat([F_L[n].double().flatten() for n, _ in model.named_parameters()])
    d = torch.cat([delta[n].flatten() for n, _ in model.named_parameters()])
    per = brute_grads(model, tok, samples(rows))
    directional = [float((f * g * d).sum()) for g in per]
    size = [float((f * g * g).sum()) for g in per]
    assert _order(directional) != _order(size)  # else the two limits could not be told apart
    small = confidence_scores(model, tok, samples(rows), F, gL, 48, optimum=delta, alpha=1e-9, fisher_L=F_L)
    large = confidence_scores(model, tok, samples(rows), F, gL, 48, optimum=delta, alpha=1e6, fisher_L=F_L)
    assert _order(small["score_optimum_distance"]) == _order(directional)
    assert _order(large["score_optimum_distance"]) == _order(size)


# ---------------------------------------------------------------- the stages read theta*_L from its artifact
def _project(tmp_path, tiny, rows, fisher_at="target", optimum_extra=None):
    from datasets import Dataset, DatasetDict

    from pipeline import paths
    from pipeline.io import save_dataset, save_pretrained, write_parquet

    model, tok = tiny
    save_pretrained(paths.BASE_MODEL, model, tok)
    save_dataset(paths.LEARN_DATA, DatasetDict({"train": Dataset.from_list(rows), "test": Dataset.from_list(rows[:2])}))
    sk = pd.DataFrame({"sample_id": range(len(SAMPLES)), "forget_task": ["lab_conflict", "lab_neutral", "lab_count"] * 2,
                       "prompt": [r["prompt"] for r in rows[:len(SAMPLES)]], "response": SAMPLES,
                       "truncated": [False] * len(SAMPLES)})
    write_parquet(paths.SELF_KNOWLEDGE, sk)
    return parse_config({
        "data": {"max_length": 48}, "fisher": {"n_samples": 12, "at": fisher_at},
        "optimum": {"steps": 5, "lr": 1e-2, "batch_size": 4, "warmup_steps": 1, "seed": 3, "n_validation": 0, **(optimum_extra or {})},
        "confidence": {"score": "optimum_distance", "alpha": 0.3, "probe": {"steps": 2, "lr": 1e-3, "batch_size": 4, "seed": 0}},
    })


def test_confidence_stage_reads_theta_star_from_the_optimum_artifact(tmp_path, tiny, rows, monkeypatch):
    """stages optimum -> fisher -> confidence in a scratch project: score_optimum_distance equals the
    formula with theta*_L from an independent plain fine-tune under params `optimum` (not theta_base,
    not the probe, whose settings differ) and F_L at it; changing only Delta_L in
    artifacts/optimum.safetensors changes the scores to the formula with that Delta_L."""
    from safetensors.torch import load_file, save_file

    from pipeline import paths
    from stages import confidence as conf_stage
    from stages import fisher as fisher_stage
    from stages import optimum as optimum_stage

    monkeypatch.chdir(tmp_path)
    cfg = _project(tmp_path, tiny, rows)
    model, tok = tiny
    for st in (optimum_stage, fisher_stage, conf_stage):
        st.run(cfg)
    df = pd.read_parquet(paths.CONFIDENCE).sort_values("sample_id")
    assert (df["confidence"] == df["score_optimum_distance"]).all()

    star = copy.deepcopy(model)
    plain_finetune(star, tok, rows, 5, 1e-2, 4, 3, 48, warmup_steps=1)
    F_L, _ = fisher_and_mean_grad(star, tok, rows, 48)
    f = torch.cat([F_L[n].double().flatten() for n, _ in model.named_parameters()])
    theta_base, theta_star = flat(model), flat(star)
    per = brute_grads(model, tok, samples(rows))

    def ref(delta):
        return [float(0.5 * (f * (0.3 * g + delta) ** 2).sum()) for g in per]

    assert np.allclose(df["score_optimum_distance"], ref(theta_star - theta_base), rtol=1e-5)
    assert not np.allclose(df["score_optimum_distance"], ref(torch.zeros_like(theta_base)), rtol=1e-3)
    probe = copy.deepcopy(model)
    plain_finetune(probe, tok, rows, 2, 1e-3, 4, 0, 48)
    assert not np.allclose(df["score_optimum_distance"], ref(flat(probe) - theta_base), rtol=1e-3)

    tensors = load_file(str(paths.OPTIMUM))
    save_file({k: (-2 * v if k.startswith("delta.") else v) for k, v in tensors.items()}, str(paths.OPTIMUM))
    conf_stage.run(cfg)
    df2 = pd.read_parquet(paths.CONFIDENCE).sort_values("sample_id")
    assert np.allclose(df2["score_optimum_distance"], ref(-2 * (theta_star - theta_base)), rtol=1e-5)
    assert np.allclose(df2["score_fisher_distance"], df["score_fisher_distance"])  # the other scores do not read it


def test_heldout_fisher_and_early_stopping_in_the_stages(tmp_path, tiny, rows, monkeypatch):
    """optimum.n_validation + fisher.at heldout: the optimum stage keeps the step of the lowest
    validation NLL (its theta.<param> = a plain run of exactly best_step steps), the fisher stage's
    F_L is the per-sample Fisher at that theta*_L over the learning task's VALIDATION rows (not its
    training rows), and metrics/confidence.json reports the published form's constant and share."""
    import json

    from safetensors.torch import load_file

    from pipeline import paths
    from pipeline.optimum import validation_rows
    from stages import confidence as conf_stage
    from stages import fisher as fisher_stage
    from stages import optimum as optimum_stage

    monkeypatch.chdir(tmp_path)
    cfg = _project(tmp_path, tiny, rows, "heldout", {"n_validation": 6, "eval_every": 1, "patience": 2})
    model, tok = tiny
    for st in (optimum_stage, fisher_stage, conf_stage):
        st.run(cfg)
    m = json.loads((paths.METRICS / "optimum.json").read_text())
    curve = {int(k): v for k, v in m["val_curve"].items()}
    assert sorted(curve) == list(range(m["steps_run"] + 1)) and m["best_step"] == min(curve, key=curve.get)
    assert m["steps"] == m["best_step"] and m["max_steps"] == 5 and m["n_validation"] == 6
    star = copy.deepcopy(model)
    plain_finetune(star, tok, rows, m["best_step"], 1e-2, 4, 3, 48, warmup_steps=1)
    tensors = load_file(str(paths.OPTIMUM))
    assert all(torch.equal(tensors[f"theta.{n}"], p) for n, p in star.named_parameters())

    val = validation_rows(cfg.data.learn, 6, cfg.data.seed)
    assert not {r["prompt"] for r in val} & {r["prompt"] for r in rows}
    f_val, _ = fisher_and_mean_grad(star, tok, val, 48)
    f_train, _ = fisher_and_mean_grad(star, tok, rows, 48)
    saved = load_file(str(paths.FISHER))
    for n, _ in model.named_parameters():
        assert torch.allclose(saved[f"fisher_target.{n}"], f_val[n], rtol=1e-4, atol=1e-12), n
    assert not all(torch.allclose(saved[f"fisher_target.{n}"], f_train[n], rtol=1e-2) for n, _ in model.named_parameters())
    stats = json.loads((paths.METRICS / "confidence.json").read_text())["optimum_distance"]
    const = 0.5 * sum(float((f_val[n].double() * (tensors[f"delta.{n}"]) ** 2).sum()) for n, _ in model.named_parameters())
    assert stats["constant"] == pytest.approx(const, rel=1e-4)


def test_new_params_are_validated_by_name():
    from pipeline.config import ConfigError

    for raw, needle in (({"confidence": {"alpha": 0}}, "confidence.alpha"), ({"fisher": {"at": "middle"}}, "fisher.at"),
                        ({"optimum": {"n_validation": -1}}, "optimum.n_validation"),
                        ({"optimum": {"eval_every": 0}}, "optimum.eval_every"),
                        ({"optimum": {"patience": 0}}, "optimum.patience"),
                        ({"optimum": {"steps": 0}}, "optimum.steps"), ({"optimum": {"lr": -1}}, "optimum.lr"),
                        ({"optimum": {"warmup_steps": -1}}, "optimum.warmup_steps"),
                        ({"optimum": {"typo": 1}}, "optimum.typo"),
                        ({"confidence": {"score": "published"}}, "confidence.score")):
        with pytest.raises(ConfigError) as e:
            parse_config(raw)
        assert needle in str(e.value) and "\n" not in str(e.value), raw
    assert parse_config({"confidence": {"score": "fisher_distance"}}).confidence.score == "fisher_distance"
