"""The MMoE synthetic-task generator (PLE constants)."""

from __future__ import annotations

import pytest
import torch

from mtlzoo import MtlzooError
from mtlzoo.data import synthetic_tasks
from mtlzoo.data.synthetic import task_weights


def labels(dataset) -> torch.Tensor:
    data = dataset.with_format("torch")
    return torch.stack([data[:][c] for c in dataset.column_names if c.startswith("y")], dim=1)


@pytest.mark.parametrize("correlation", [-1.0, -0.3, 0.0, 0.2, 0.5, 0.9, 1.0])
def test_task_weights_have_cosine_p_and_pairs_are_orthogonal(correlation):
    w = task_weights(correlation, dim=64, num_pairs=3, scale=2.0,
                     generator=torch.Generator().manual_seed(0))
    cosine = torch.nn.functional.cosine_similarity
    for k in range(3):
        assert cosine(w[2 * k], w[2 * k + 1], dim=0).item() == pytest.approx(correlation, abs=1e-9)
        assert w[2 * k].norm().item() == pytest.approx(2.0) and w[2 * k + 1].norm() == (
            pytest.approx(2.0)
        )
    for i in range(6):
        for j in range(6):
            if i // 2 != j // 2:
                assert abs(torch.dot(w[i], w[j]).item()) < 1e-9


def test_at_p_one_the_noiseless_labels_coincide():
    y = labels(synthetic_tasks(500, 1.0, dim=32, noise_std=0.0))
    torch.testing.assert_close(y[:, 0], y[:, 1])


def test_label_correlation_rises_with_p():
    correlations = []
    for p in (-0.5, 0.2, 0.5, 0.9):
        y = labels(synthetic_tasks(4000, p, dim=64, seed=3))
        correlations.append(torch.corrcoef(y.T)[0, 1].item())
    assert correlations == sorted(correlations)
    assert correlations[0] < 0 < correlations[-1]


def test_the_same_seed_gives_the_same_rows():
    a, b = synthetic_tasks(50, 0.5, dim=16, seed=7), synthetic_tasks(50, 0.5, dim=16, seed=7)
    assert a.to_dict() == b.to_dict()
    assert a.to_dict() != synthetic_tasks(50, 0.5, dim=16, seed=8).to_dict()


def test_defaults_are_the_ple_recipe_and_splits():
    data = synthetic_tasks(100, splits={"train": 0.8, "validation": 0.1, "test": 0.1})
    assert {name: len(split) for name, split in data.items()} == {
        "train": 80, "validation": 10, "test": 10
    }
    assert len(data["train"][0]["x"]) == 512 and data["train"].column_names == ["x", "y1", "y2"]
    assert synthetic_tasks(10, num_pairs=2, dim=8).column_names == ["x", "y1", "y2", "y3", "y4"]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"correlation": 1.5}, "1.5"),
        ({"num_rows": 0}, "num_rows"),
        ({"num_pairs": 5, "dim": 8}, "dim=8"),
        ({"splits": {"train": 0.5, "test": 0.4}}, "sum"),
        ({"num_rows": 3, "splits": {"train": 0.9, "test": 0.1}}, "empty"),
    ],
)
def test_bad_arguments(kwargs, fragment):
    with pytest.raises(MtlzooError) as err:
        synthetic_tasks(**{"num_rows": 20, "dim": 16, **kwargs})
    assert fragment in str(err.value)
