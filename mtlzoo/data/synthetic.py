"""Regression tasks with a controlled correlation: the MMoE paper's generator (Ma et al.,
KDD 2018, section 3.2) with the constants the PLE paper fixes (Tang et al., RecSys 2020,
section 5.2.1): c = 1, m = 10, d = 512, alpha_j and beta_j drawn from N(0, 1).

For each pair of tasks, with orthonormal u1, u2 in R^d and correlation p:
``w1 = c u1``, ``w2 = c (p u1 + sqrt(1 - p^2) u2)``, ``x ~ N(0, I_d)`` and
``y_i = w_i . x + sum_j sin(alpha_j w_i . x + beta_j) + eps_i``, ``eps_i ~ N(0, 0.01)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from mtlzoo import _checks
from mtlzoo.errors import MtlzooError


def task_weights(correlation: float, dim: int, num_pairs: int, scale: float,
                 generator: torch.Generator) -> torch.Tensor:
    """(2 * num_pairs, dim) task weight vectors; pair k's two rows have cosine ``correlation``
    and every pair is orthogonal to the others."""
    if 2 * num_pairs > dim:
        raise MtlzooError(f"{num_pairs} task pairs need dim >= {2 * num_pairs}, got dim={dim}")
    basis, _ = torch.linalg.qr(torch.randn(dim, 2 * num_pairs, generator=generator,
                                           dtype=torch.float64))
    u1, u2 = basis.T[0::2], basis.T[1::2]
    w1 = scale * u1
    w2 = scale * (correlation * u1 + math.sqrt(1 - correlation**2) * u2)
    return torch.stack([w1, w2], dim=1).reshape(2 * num_pairs, dim)


def synthetic_tasks(
    num_rows: int = 10_000,
    correlation: float = 0.5,
    *,
    num_pairs: int = 1,
    dim: int = 512,
    scale: float = 1.0,
    num_sines: int = 10,
    noise_std: float = 0.1,
    seed: int = 0,
    splits: Mapping[str, float] | None = None,
):
    """A ``datasets.Dataset`` with columns ``x`` (dim floats) and ``y1 .. y{2 * num_pairs}``
    (tasks ``y{2k-1}`` and ``y{2k}`` correlated by ``correlation``), or a ``DatasetDict``
    split by the fractions in ``splits`` (e.g. ``{"train": 0.8, "validation": 0.1,
    "test": 0.1}``), rows assigned in order. The same seed gives the same rows.
    """
    import datasets  # imported here: mtlzoo itself stays light to import

    _checks.positive_int("num_rows", num_rows)
    _checks.positive_int("num_pairs", num_pairs)
    _checks.positive_int("dim", dim)
    _checks.non_negative_int("num_sines", num_sines)
    _checks.in_range("correlation", correlation, -1, 1)
    _checks.non_negative_int("seed", seed)
    generator = torch.Generator().manual_seed(seed)
    weights = task_weights(correlation, dim, num_pairs, scale, generator)
    alpha = torch.randn(num_sines, generator=generator, dtype=torch.float64)
    beta = torch.randn(num_sines, generator=generator, dtype=torch.float64)
    x = torch.randn(num_rows, dim, generator=generator, dtype=torch.float64)
    projections = x @ weights.T  # (n, tasks)
    sines = torch.sin(projections[..., None] * alpha + beta).sum(-1)
    noise = noise_std * torch.randn(projections.shape, generator=generator, dtype=torch.float64)
    y = projections + sines + noise
    columns = {"x": x.float().numpy()}
    columns.update({f"y{t + 1}": y[:, t].float().numpy() for t in range(y.shape[1])})
    dataset = datasets.Dataset.from_dict(columns)
    if splits is None:
        return dataset
    return _split(dataset, splits)


def _split(dataset, splits: Mapping[str, float]):
    import datasets

    fractions = dict(splits)
    if not fractions or any(f <= 0 for f in fractions.values()) or (
        abs(sum(fractions.values()) - 1) > 1e-9
    ):
        raise MtlzooError(f"splits must be positive fractions summing to 1, got {fractions!r}")
    bounds, start = {}, 0
    for i, (name, fraction) in enumerate(fractions.items()):
        end = len(dataset) if i == len(fractions) - 1 else start + round(fraction * len(dataset))
        bounds[name] = (start, end)
        start = end
    if any(end <= begin for begin, end in bounds.values()):
        raise MtlzooError(f"{len(dataset)} rows leave a split of {fractions!r} empty")
    return datasets.DatasetDict(
        {name: dataset.select(range(begin, end)) for name, (begin, end) in bounds.items()}
    )
