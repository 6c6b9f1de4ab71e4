"""The model registry: names, aliases, registration, and keyword checking in create_model."""

from __future__ import annotations

import pytest

import mtlzoo
from mtlzoo import MtlzooError, Task, create_model, register_model
from mtlzoo._registry import _ALIASES, _MODELS
from mtlzoo.models import MultiTaskModel, SharedBottom

TASKS = (Task("click"), Task("topic", kind="multiclass", num_classes=4))
BUILTIN = ("aitm", "cgc", "cross_stitch", "dselect_k", "esmm", "l2_constrained", "mmoe", "mtan",
           "omoe", "ple", "shared_bottom", "single_task", "sluice")
SCRATCH = "test_registry_scratch_model"


@pytest.fixture
def clean_registry():
    """Restore the private registry dicts after a test that registers models."""
    models, aliases = dict(_MODELS), dict(_ALIASES)
    yield
    _MODELS.clear()
    _MODELS.update(models)
    _ALIASES.clear()
    _ALIASES.update(aliases)


def test_list_models_is_sorted_and_exactly_the_builtins():
    names = mtlzoo.list_models()
    assert names == sorted(names)
    assert names == sorted(BUILTIN)


def test_alias_is_not_listed_but_builds():
    assert "hard_sharing" not in mtlzoo.list_models()
    assert mtlzoo.get_model_builder("hard_sharing") is SharedBottom
    model = create_model("hard_sharing", in_features=8, tasks=TASKS)
    assert type(model) is SharedBottom


@pytest.mark.parametrize("name", mtlzoo.list_models())
def test_every_model_builds_from_in_features_and_tasks(name):
    model = create_model(name, in_features=8, tasks=TASKS)
    assert isinstance(model, MultiTaskModel)
    assert model.task_names == ("click", "topic")


def _scratch_builder(*, in_features: int, tasks, width: int = 8) -> SharedBottom:
    return SharedBottom(in_features=in_features, tasks=tasks, bottom_dims=(width,))


@pytest.mark.usefixtures("clean_registry")
def test_register_new_model_and_build_it():
    register_model(SCRATCH, aliases=(SCRATCH + "_alias",))(_scratch_builder)
    assert SCRATCH in mtlzoo.list_models()
    assert SCRATCH + "_alias" not in mtlzoo.list_models()
    for name in (SCRATCH, SCRATCH + "_alias"):
        model = create_model(name, in_features=4, tasks=TASKS, width=5)
        assert model.bottom.out_features == 5
    with pytest.raises(MtlzooError, match="'widht'"):
        create_model(SCRATCH, in_features=4, tasks=TASKS, widht=5)


@pytest.mark.usefixtures("clean_registry")
@pytest.mark.parametrize(
    ("name", "aliases", "taken"),
    [
        ("mmoe", (), "mmoe"),  # an existing name
        ("hard_sharing", (), "hard_sharing"),  # an existing alias, as a name
        (SCRATCH, ("ple",), "ple"),  # an existing name, as an alias
        (SCRATCH, ("hard_sharing",), "hard_sharing"),  # an existing alias, as an alias
    ],
)
def test_register_taken_name_raises(name, aliases, taken):
    before = (dict(_MODELS), dict(_ALIASES))
    with pytest.raises(MtlzooError) as err:
        register_model(name, aliases=aliases)(_scratch_builder)
    assert repr(taken) in str(err.value)
    assert (dict(_MODELS), dict(_ALIASES)) == before  # nothing half-registered


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("mmeo", "mmoe"),
        ("crossstitch", "cross_stitch"),
        ("shared_botom", "shared_bottom"),
        ("hard_shareing", "hard_sharing"),
        ("transformer", None),
        (123, None),
    ],
)
def test_unknown_model_name(name, suggestion):
    with pytest.raises(MtlzooError) as err:
        create_model(name, in_features=8, tasks=TASKS)
    assert repr(name) in str(err.value)
    if suggestion is not None:
        assert repr(suggestion) in str(err.value)


@pytest.mark.parametrize(
    ("name", "keyword", "suggestion"),
    [
        ("mmoe", "bottom_dims", None),
        ("mmoe", "num_expert", "num_experts"),
        ("omoe", "num_gates", None),
        ("shared_bottom", "expert_dims", None),
        ("cross_stitch", "column_dim", "column_dims"),
        ("cgc", "num_levels", None),
        ("ple", "num_level", "num_levels"),
        ("ple", "towers_dims", "tower_dims"),
    ],
)
def test_unknown_keyword(name, keyword, suggestion):
    with pytest.raises(MtlzooError) as err:
        create_model(name, in_features=8, tasks=TASKS, **{keyword: 2})
    assert repr(keyword) in str(err.value)
    if suggestion is not None:
        assert repr(suggestion) in str(err.value)


@pytest.mark.parametrize("name", BUILTIN)
@pytest.mark.parametrize("keyword", ["in_features", "tasks"])
def test_missing_required_keyword(name, keyword):
    kwargs = {"in_features": 8, "tasks": TASKS}
    del kwargs[keyword]
    with pytest.raises(MtlzooError, match=keyword):
        create_model(name, **kwargs)


DOCUMENTED = [
    ("shared_bottom", {"bottom_dims": (16, 8)}),
    ("single_task", {"hidden_dims": (16, 8)}),
    ("cross_stitch", {"column_dims": (16, 8)}),
    ("mmoe", {"num_experts": 3, "expert_dims": (16, 8)}),
    ("omoe", {"num_experts": 3, "expert_dims": (16, 8)}),
    ("cgc", {"num_shared_experts": 1, "num_task_experts": 3, "expert_dims": (16, 8)}),
    ("ple", {"num_shared_experts": 1, "num_task_experts": 3, "expert_dims": (16, 8)}),
    ("ple", {"num_levels": 3}),
    *[
        (name, common)
        for name in BUILTIN
        for common in ({"tower_dims": (8, 4)}, {"dropout": 0.25}, {"activation": "gelu"})
    ],
]


@pytest.mark.parametrize(("name", "kwargs"), DOCUMENTED)
def test_documented_keywords_are_accepted(name, kwargs):
    model = create_model(name, in_features=8, tasks=TASKS, **kwargs)
    default = create_model(name, in_features=8, tasks=TASKS)
    assert isinstance(model, MultiTaskModel)
    if set(kwargs) - {"dropout", "activation"}:  # these widths and counts change parameters
        assert _num_params(model) != _num_params(default)


def _num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
