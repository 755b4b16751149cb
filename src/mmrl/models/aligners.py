"""The aligners that map the shared representation space (K, d_r) into each token block.

MMRL: one affine map per block (:class:`BlockAligners`); MMRL++: one shared weight plus a
low-rank residual per block (:class:`SharedResidualAligners`, SRRA). Both expose
``map(i, R) -> (K, d_out)`` for the i-th token block (0 = block J).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BlockAligners(nn.ModuleList):
    """MMRL: one affine map ``F^i: d_r -> d_out`` per token block, all seven starting as
    copies of ONE freshly initialised ``nn.Linear`` (identical at step 0).

    Parameters ``{i}.weight`` (d_out, d_r), ``{i}.bias`` (d_out,).
    """

    def __init__(self, rep_dim: int, out_dim: int, n_blocks: int):
        proto = nn.Linear(rep_dim, out_dim)
        super().__init__([nn.Linear(rep_dim, out_dim) for _ in range(n_blocks)])
        with torch.no_grad():
            for lin in self:
                lin.weight.copy_(proto.weight)
                lin.bias.copy_(proto.bias)

    def map(self, i: int, rep: Tensor) -> Tensor:
        """(K, d_r) -> (K, d_out) for the i-th token block (0 = block J)."""
        return self[i](rep)


class SharedResidualAligners(nn.Module):
    """MMRL++ SRRA: ``F^i(R) = R (W + A_i B_i)^T + b_i``.

    ``weight`` W (d_out, d_r) is shared by all blocks (the weight of one default-initialised
    Linear); per block, ``A.{i}`` (d_out, r) kaiming-uniform(a=sqrt 5), ``B.{i}`` (r, d_r)
    zeros and ``bias.{i}`` (d_out,) a trainable copy of that Linear's bias. At step 0 every
    block's map equals the shared one.
    """

    def __init__(self, rep_dim: int, out_dim: int, n_blocks: int, rank: int):
        super().__init__()
        proto = nn.Linear(rep_dim, out_dim)
        self.weight = nn.Parameter(proto.weight.detach().clone())
        self.A = nn.ParameterList()
        self.B = nn.ParameterList()
        self.bias = nn.ParameterList()
        for _ in range(n_blocks):
            a = torch.empty(out_dim, rank)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.A.append(nn.Parameter(a))
            self.B.append(nn.Parameter(torch.zeros(rank, rep_dim)))
            self.bias.append(nn.Parameter(proto.bias.detach().clone()))

    def __len__(self) -> int:
        return len(self.A)

    def map(self, i: int, rep: Tensor) -> Tensor:
        """(K, d_r) -> (K, d_out) for the i-th token block (0 = block J)."""
        return F.linear(rep, self.weight + self.A[i] @ self.B[i], self.bias[i])
