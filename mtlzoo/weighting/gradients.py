"""Per-task gradients of many parameters in one vectorised backward.

Axes: t tasks, p flattened parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def task_gradients(
    losses: Tensor, shared: Sequence[Tensor], specific: Sequence[Tensor] = ()
) -> tuple[Tensor, Tensor]:
    """The Jacobian of ``losses`` (t,) w.r.t. the parameters, one row per task.

    One backward pass batched over the t tasks (``is_grads_batched=True``), not t passes
    with ``retain_graph=True``. Returns ``(shared (t, p_shared), specific (t, p_specific))``;
    a parameter a loss does not reach gets zeros.
    """
    params = [*shared, *specific]
    eye = torch.eye(len(losses), dtype=losses.dtype, device=losses.device)
    grads = torch.autograd.grad(
        losses, params, grad_outputs=eye, is_grads_batched=True, allow_unused=True,
        materialize_grads=True,
    )
    flat = [g.reshape(len(losses), -1) for g in grads]
    empty = losses.new_zeros(len(losses), 0)
    shared_flat = torch.cat(flat[: len(shared)], dim=1) if shared else empty
    specific_flat = torch.cat(flat[len(shared) :], dim=1) if specific else empty
    return shared_flat, specific_flat


def accumulate_flat(params: Sequence[Tensor], flat: Tensor) -> None:
    """Add the slices of a flat (p,) vector to the parameters' ``.grad``."""
    offset = 0
    for param in params:
        piece = flat[offset : offset + param.numel()].view_as(param)
        offset += param.numel()
        if param.grad is None:
            param.grad = piece.clone()
        else:
            param.grad.add_(piece)
