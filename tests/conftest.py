"""Shared fixtures: a mixed set of tasks and small model options for every architecture."""

from __future__ import annotations

import pytest
import torch

import mtlzoo

IN_FEATURES = 12

# small but non-trivial settings: two-layer experts and towers, several levels
SMALL_OPTIONS = {
    "shared_bottom": {"bottom_dims": (10, 8)},
    "single_task": {"hidden_dims": (10, 8)},
    "cross_stitch": {"column_dims": (10, 8)},
    "mmoe": {"num_experts": 5, "expert_dims": (10, 8)},
    "omoe": {"num_experts": 5, "expert_dims": (10, 8)},
    "cgc": {"num_shared_experts": 2, "num_task_experts": 2, "expert_dims": (10, 8)},
    "ple": {
        "num_levels": 3, "num_shared_experts": 2, "num_task_experts": 2, "expert_dims": (10, 8)
    },
    "esmm": {"bottom_dims": (10, 8)},
    "dselect_k": {"num_experts": 5, "k": 2, "expert_dims": (10, 8)},
    "mtan": {"shared_dims": (10, 8)},
    "aitm": {"task_tower_dims": (10, 8)},
    "l2_constrained": {"column_dims": (10, 8), "penalty": 0.1},
    "sluice": {"column_dims": (8, 8), "num_subspaces": 2, "orthogonality": 0.1},
}


def mixed_tasks() -> list[mtlzoo.Task]:
    return [
        mtlzoo.Task("income", kind="binary"),
        mtlzoo.Task("topic", kind="multiclass", num_classes=4),
        mtlzoo.Task("score", kind="regression"),
    ]


def build(name: str, tasks: list[mtlzoo.Task] | None = None, **overrides) -> mtlzoo.MultiTaskModel:
    """A small model of the named architecture (unregistered options default to the model's)."""
    options = {"tower_dims": (16, 8), **SMALL_OPTIONS.get(name, {}), **overrides}
    return mtlzoo.create_model(
        name, in_features=IN_FEATURES, tasks=tasks or mixed_tasks(), **options
    )


@pytest.fixture
def float64():
    """Run a test in float64, from seed 0."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(params=mtlzoo.list_models())
def model_name(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def peers_installed() -> dict[str, str]:
    """The peers' versions; the test is skipped where the [peers] extra is not installed."""
    from mtlzoo.bench import peers

    pytest.importorskip("torch_rechub", reason="the [peers] extra is not installed")
    try:
        peers._import_deepctr()  # importorskip would run deepctr-torch's online version check
    except ImportError:
        pytest.skip("the [peers] extra is not installed (deepctr-torch)")
    return peers.require_peers()
