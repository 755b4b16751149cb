"""The per-sample classification losses a run may train with (``optim.loss``, ``optim.balance``).

Each maps logits (B, C) and labels (B,) to per-sample losses (B,); the method averages them over
the batch and weights them as it weights cross-entropy (MMRL: alpha on the class-token term,
1 - alpha on the representation term).

* ``ce``: cross-entropy ``-log p_y`` (the papers').
* ``gce``: generalised cross-entropy ``(1 - p_y^q) / q`` (Zhang & Sabuncu, NeurIPS 2018): q -> 0
  is cross-entropy, q = 1 the mean absolute error, which does not chase wrong labels; prompt
  tuning under label noise uses q = 0.7 (PTNL, ICCV 2023).
* ``logit_adjust``: cross-entropy of ``logits + tau * log pi`` with pi the training classes'
  frequencies (Menon et al., ICLR 2021): the loss of a rare class's images grows, so the model
  stops favouring the frequent classes; the logits used at test time are not changed.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Criterion = Callable[[Tensor, Tensor], Tensor]  # (logits (B, C), labels (B,)) -> (B,)


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """``-log softmax(logits)_y`` per sample (B,)."""
    return F.cross_entropy(logits, labels, reduction="none")


def generalized_cross_entropy(q: float) -> Criterion:
    """``(1 - p_y^q) / q`` per sample, with ``p = softmax(logits)``; ``0 < q <= 1``."""
    if not 0.0 < q <= 1.0:
        raise ValueError(f"gce q = {q}: expected a value in (0, 1]")

    def gce(logits: Tensor, labels: Tensor) -> Tensor:
        log_p = F.log_softmax(logits, dim=-1).gather(1, labels[:, None]).squeeze(1)
        return (1.0 - torch.exp(q * log_p)) / q   # p_y^q as exp(q log p_y): no underflow at tiny p_y
    return gce


def logit_adjusted(base: Criterion, class_counts: Sequence[int], tau: float) -> Criterion:
    """``base(logits + tau * log pi, y)`` with ``pi_c = n_c / sum n``: the logit-adjusted loss."""
    if any(n <= 0 for n in class_counts):
        raise ValueError(f"logit adjustment needs every training class to have images, got counts {list(class_counts)}")
    total = float(sum(class_counts))
    log_prior = torch.tensor([math.log(n / total) for n in class_counts], dtype=torch.float64)

    def adjusted(logits: Tensor, labels: Tensor) -> Tensor:
        return base(logits + tau * log_prior.to(logits), labels)
    return adjusted


def build_criterion(loss: str = "ce", q: float = 0.7, balance: str = "none", tau: float = 1.0,
                    class_counts: Sequence[int] | None = None) -> Criterion:
    """The training loss of ``optim.loss`` (ce / gce with ``optim.gce_q``) and ``optim.balance``
    (none / logit_adjust with ``optim.balance_tau`` and the realised training class counts)."""
    base = {"ce": lambda: cross_entropy, "gce": lambda: generalized_cross_entropy(q)}[loss]()
    if balance == "none":
        return base
    if class_counts is None:
        raise ValueError("optim.balance logit_adjust needs the training class counts")
    return logit_adjusted(base, class_counts, tau)


__all__ = ["Criterion", "cross_entropy", "generalized_cross_entropy", "logit_adjusted", "build_criterion"]
