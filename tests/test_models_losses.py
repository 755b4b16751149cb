"""The training losses of optim.loss / optim.balance (mmrl.models.losses) against their formulas in
float64, and their wiring: the model's loss terms, the config's checks, a run that trains with them.

Tolerances: every comparison is float64 on a few numbers; the formulas are evaluated with Python's
math on the same float64 logits, so 1e-12 leaves room only for the order of a softmax's sum.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import make_benchmark_dataset, tiny_train_argv, write_tiny_clip
from mmrl.cli import main
from mmrl.config import ConfigError, resolve_config
from mmrl.models import build_method, load_backbone, method_config
from mmrl.models.losses import build_criterion, cross_entropy, generalized_cross_entropy, logit_adjusted


def _softmax(row: list[float]) -> list[float]:
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 5, generator=g, dtype=torch.float64) * 3, torch.tensor([0, 1, 4, 2, 2, 3])


@pytest.mark.parametrize("q", [0.1, 0.7, 1.0])
def test_gce_is_its_formula(batch, q):
    logits, labels = batch
    got = generalized_cross_entropy(q)(logits, labels)
    want = [(1 - _softmax(r)[y] ** q) / q for r, y in zip(logits.tolist(), labels.tolist())]
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: generalized_cross_entropy(q)(x, labels),
                                    (logits.clone().requires_grad_(),))


def test_gce_tends_to_cross_entropy_and_refuses_bad_q(batch):
    logits, labels = batch
    # (1 - p^q) / q = -log p - q (log p)^2 / 2 + ...: at q = 1e-6 within 1e-5 of CE for these p
    assert torch.allclose(generalized_cross_entropy(1e-6)(logits, labels), cross_entropy(logits, labels), atol=1e-4)
    for q in (0.0, 1.5):
        with pytest.raises(ValueError, match="expected a value in"):
            generalized_cross_entropy(q)


@pytest.mark.parametrize("tau", [0.5, 1.0])
def test_logit_adjustment_is_its_formula(batch, tau):
    logits, labels = batch
    counts = [16, 8, 4, 2, 1]
    got = logit_adjusted(cross_entropy, counts, tau)(logits, labels)
    want = []
    for r, y in zip(logits.tolist(), labels.tolist()):
        adj = [v + tau * math.log(n / sum(counts)) for v, n in zip(r, counts)]
        want.append(-math.log(_softmax(adj)[y]))
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-12)
    # a rare class's images cost more than under plain cross-entropy, a frequent one's less
    plain = cross_entropy(logits, labels)
    assert (got[labels == 4] > plain[labels == 4]).all() and (got[labels == 0] < plain[labels == 0]).all()
    with pytest.raises(ValueError, match="every training class"):
        logit_adjusted(cross_entropy, [3, 0, 2], tau)


def test_the_models_loss_terms_use_the_criterion(tmp_path):
    bb = load_backbone(str(write_tiny_clip(tmp_path / "clip.pt")))
    torch.manual_seed(0)
    model = build_method(bb, method_config("mmrl", first_rep_block=2, n_rep_tokens=2, rep_dim=16)).double()
    model.set_classes(["a", "b", "c"], "a photo of a {}.")
    images = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 1])
    crit = build_criterion("gce", 0.7, "logit_adjust", 1.0, [4, 2, 1])
    out = model.loss(images, labels, criterion=crit)
    assert torch.allclose(out.ce_class, crit(out.logits.class_, labels).mean(), rtol=0, atol=1e-12)
    assert torch.allclose(out.ce_rep, crit(out.logits.rep, labels).mean(), rtol=0, atol=1e-12)
    plain = model.loss(images, labels)
    assert torch.allclose(plain.ce_class, cross_entropy(plain.logits.class_, labels).mean(), rtol=0, atol=1e-12)
    assert not torch.allclose(out.ce_class, plain.ce_class)


@pytest.mark.parametrize("item,message", [
    ("optim.loss=focal", "optim.loss = 'focal': expected one of ce, gce"),
    ("optim.gce_q=0", "optim.gce_q = 0.0: expected a value in (0, 1]"),
    ("optim.balance=reweight", "optim.balance = 'reweight': expected one of none, logit_adjust"),
    ("optim.balance_tau=-1", "optim.balance_tau = -1.0: expected a value >= 0"),
])
def test_bad_values_are_refused_before_any_work(item, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        resolve_config("mmrl", "fewshot", "dtd", overrides=[item])


def test_a_run_trains_with_both_remedies_on_an_imbalanced_sample(tmp_path):
    clip = write_tiny_clip(tmp_path / "clip.pt")
    root = tmp_path / "data"
    make_benchmark_dataset(root, "DescribableTextures", per_class=8)
    run = tmp_path / "run"
    argv = tiny_train_argv(clip, root, run, shots=4, extra=[
        "--set", "optim.loss=gce", "--set", "optim.balance=logit_adjust",
        "--set", "data.imbalance.type=exp", "--set", "data.imbalance.ratio=0.25"])
    assert main(argv) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["imbalance"]["min"] < info["imbalance"]["max"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(0 <= r["ce_class"] <= 1 / 0.7 for r in rows)  # gce is bounded by 1 / q; CE is not
