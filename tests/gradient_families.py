"""Ill-conditioned task gradients, the kinds the MGDA and CAGrad solvers are tested on."""

from __future__ import annotations

import torch


def hard_gradients(family: str, t: int, seed: int) -> torch.Tensor:
    """(t, p) gradients of one ill-conditioned kind."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(6, generator=gen)
    noise = torch.randn(t, 6, generator=gen)
    if family == "near_parallel":  # spread across base
        across = noise - (noise @ base)[:, None] * base / (base @ base)
        return base + 1e-3 * across
    if family == "near_opposite":  # alternate signs, norms 1 to 30
        signs = torch.tensor([(-1.0) ** i for i in range(t)])
        return (signs[:, None] * base + 1e-3 * noise) * torch.linspace(1, 30, t)[:, None]
    if family == "norms_100x_apart":
        return noise * (100.0 ** torch.linspace(0, 1, t))[:, None]
    if family == "more_tasks_than_dims":  # t points in a plane: rank 2, affinely dependent
        return noise[:, :2] + 0.3 * base[:2]
    if family == "duplicated":
        grads = noise + 0.3 * base
        grads[1] = grads[0]
        return grads
    if family == "zero_gradient":
        grads = noise + base
        grads[t // 2] = 0
        return grads
    if family == "zero_gradient_conflicting":  # g_w = 0 at the minimum, g0 not a maximum
        grads = noise * torch.randn(t, 1, generator=gen).mul(1.5).exp()
        grads[t // 2] = 0
        return grads
    if family == "opposite_pair":  # g_1 = -(1 + seed) g_0
        grads = noise + 0.5 * base
        grads[1] = -(1 + seed) * grads[0]
        return grads
    raise AssertionError(family)
