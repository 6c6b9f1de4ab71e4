"""The trainer under faults: bad options, data that changes under a resume, damaged or
foreign checkpoints, diverging runs. Each case was a silent wrong result, a hang or a raw
traceback once; each must end in ``MtlzooError`` naming what is wrong, or just work."""

from __future__ import annotations

import dataclasses
import math
import signal
import warnings

import pytest
import torch

import mtlzoo
from mtlzoo import MtlzooError, Task, Trainer

D = 6
TASKS = [Task("click"), Task("price", kind="regression")]


def data(rows: int = 128, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, D, generator=g)
    return {"x": x, "click": (x[:, 0] > 0).long(), "price": x[:, 1] - x[:, 2]}


def model(name: str = "mmoe", tasks=TASKS, **options) -> mtlzoo.MultiTaskModel:
    torch.manual_seed(0)
    return mtlzoo.create_model(name, in_features=D, tasks=tasks, **options)


def trainer(net=None, **options) -> Trainer:
    options = {"lr": 1e-2, "batch_size": 32, "progress": False, **options}
    return Trainer(net or model(), **options)


@pytest.fixture
def no_hang():
    """Fail, instead of hanging the suite, when the test body runs past 20 seconds."""

    def fail(signum, frame):
        raise TimeoutError("the trainer hung: still running after 20 s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# --- options: validated once, upfront ------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("grad_clip", -1.0),  # was accepted, and flipped the gradient: training ascended
        ("grad_clip", 0),
        ("grad_clip", math.nan),
        ("grad_clip", "1"),
        ("weight_decay", -0.1),  # was a raw ValueError from inside torch.optim
        ("weight_decay", math.inf),
        ("lr", 0.0),
        ("lr", math.nan),
        ("lr", math.inf),
        ("lr_schedule", "cosin"),
        ("lr_schedule", ["cosine"]),
        ("seed", 1.5),  # was a raw TypeError from the sampler at the first fit
        ("seed", "3"),
        ("seed", True),
        ("seed", -1),
        ("device", "cuda:7" if torch.cuda.is_available() else "cuda"),
        ("device", "tpu"),
        ("device", 3.5),
        ("batch_size", 0),
        ("sampling", "shuffled"),
        ("temperature", 0.0),
        ("temperature", math.nan),
        ("progress", "yes"),
        ("input_key", 3),
        ("input_key", []),
        ("weight_key", ""),
        ("label_keys", {"click": 3}),
    ],
)
def test_every_option_is_checked_when_the_trainer_is_built(option, value):
    with pytest.raises(MtlzooError, match=option):
        trainer(**{option: value})


def test_fit_options_are_checked_before_the_first_step(tmp_path):
    t = trainer()
    for options in ({"epochs": 1, "checkpoint_every": 0}, {"epochs": 1.5}, {"steps": -2},
                    {"epochs": 1, "patience": 0, "early_stopping": "price/mse"}):
        with pytest.raises(MtlzooError):
            t.fit(data(), eval=data(64), **options)
    assert t.step == 0


# --- the joint regime never reads a per-task dataset's `label` column ----------------------


def test_a_joint_dataset_with_only_a_label_column_is_refused():
    x = torch.randn(64, D)
    joint = {"x": x, "label": (x[:, 0] > 0).long()}  # once trained *every* task on `label`
    with pytest.raises(MtlzooError, match=r"task 'click'.*'label', 'x'"):
        trainer().fit(joint, steps=1)
    # an explicit mapping still works
    t = trainer(label_keys={"click": "label", "price": "label"})
    t.fit({"x": x, "label": (x[:, 0] > 0).float()}, steps=1)
    assert t.step == 1


# --- hangs: an epoch ends when its data ends -----------------------------------------------


class WrongLength:
    """A re-iterable of dict batches whose len() is not the number it yields."""

    def __init__(self, batches: list[dict], claimed: int) -> None:
        self.batches, self.claimed = batches, claimed

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return self.claimed


def batches_of(rows: dict[str, torch.Tensor], size: int) -> list[dict]:
    n = len(next(iter(rows.values())))
    return [{k: v[i : i + size] for k, v in rows.items()} for i in range(0, n, size)]


@pytest.mark.parametrize("claimed", [10, 1])
def test_a_loader_whose_len_is_wrong_ends_its_epoch_when_its_data_ends(no_hang, claimed):
    loader = WrongLength(batches_of(data(96), 32), claimed)  # 3 batches
    t = trainer()
    history = t.fit(loader, epochs=2)
    assert t.step == 6 and list(history["step"]) == [3, 6]


def test_a_loader_that_yields_nothing_is_an_error_not_a_hang(no_hang):
    with pytest.raises(MtlzooError, match="no batches"):
        trainer().fit(WrongLength([], claimed=3), epochs=1)
    per_task = {"click": {"x": torch.randn(8, D), "label": torch.ones(8).long()},
                "price": WrongLength([], claimed=2)}
    with pytest.raises(MtlzooError, match="no batches"):
        trainer(model(), sampling="round_robin").fit(per_task, steps=3)


def mid_epoch_checkpoint(path, **options):
    t = trainer(**options)
    t.fit(data(128), steps=2, checkpoint=path)  # 2 of the 4 batches of epoch 1
    return t


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"batch_size": 64}, "batch_size"),  # was an endless loop
        ({"rows": 40}, "rows"),  # a smaller dataset than the checkpoint's: the same
    ],
)
def test_a_mid_epoch_resume_on_other_data_says_what_changed(tmp_path, no_hang, change,
                                                            fragment):
    path = tmp_path / "run.pt"
    mid_epoch_checkpoint(path)
    t = trainer(batch_size=change.get("batch_size", 32))
    t.load(path)
    with pytest.raises(MtlzooError, match=fragment):
        t.fit(data(change.get("rows", 128)), epochs=2)
    assert t.step == 2


def test_a_resume_at_an_epoch_boundary_may_change_the_data_with_a_warning(tmp_path, no_hang):
    path = tmp_path / "run.pt"
    trainer().fit(data(128), epochs=1, checkpoint=path)
    t = trainer(batch_size=64)
    t.load(path)
    with pytest.warns(UserWarning, match="batch_size"):
        t.fit(data(128), epochs=2)
    assert t.step == 4 + 2


def test_a_per_task_resume_continues_each_task_where_it_was(tmp_path, no_hang):
    per_task = {"click": {"x": torch.randn(40, D), "label": torch.ones(40).long()},
                "price": {"x": torch.randn(100, D), "label": torch.randn(100)}}
    path = tmp_path / "run.pt"
    whole = trainer(seed=4)
    whole.fit(per_task, epochs=2)
    first = trainer(seed=4)
    first.fit(per_task, steps=3, checkpoint=path)  # mid-epoch, click in its second pass
    second = trainer(seed=4)
    second.load(path)
    second.fit(per_task, epochs=2)
    for key, value in whole.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[key], value), key


# --- checkpoints ---------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "run.pt"
    trainer().fit(data(64), epochs=1, checkpoint=path)
    return path


def flip_a_bit(path, where: float) -> None:
    raw = bytearray(path.read_bytes())
    raw[int(len(raw) * where)] ^= 0x10
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("where", [0.5, 0.75, 0.97])
def test_a_flipped_bit_is_refused(saved, where):
    flip_a_bit(saved, where)  # torch.load does not check the zip CRC: this once loaded
    with pytest.raises(MtlzooError, match=rf"{saved.name}.*(checksum|corrupt)"):
        trainer().load(saved)


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "truncated"),
        (lambda p: p.write_bytes(p.read_bytes()[:10]), "truncated|not an mtlzoo"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_text("epoch,loss\n1,0.5\n"), "not an mtlzoo checkpoint"),
        (lambda p: torch.save({"weights": torch.ones(3)}, p), "not an mtlzoo checkpoint"),
    ],
    ids=["half", "ten-bytes", "empty", "text", "foreign-torch-file"],
)
def test_a_damaged_or_foreign_file_is_refused_naming_the_file(saved, damage, fragment):
    damage(saved)
    with pytest.raises(MtlzooError, match=rf"{saved.name}.*({fragment})"):
        trainer().load(saved)


def test_a_folder_is_not_a_checkpoint(tmp_path):
    with pytest.raises(MtlzooError, match="not a file"):
        trainer().load(tmp_path)


@pytest.mark.parametrize(
    ("other", "fragment"),
    [
        (lambda: trainer(model("ple")), "MMoE model.*PLE"),
        (lambda: trainer(model(num_experts=4)), r"experts.*\(8, 6, 64\).*\(4, 6, 64\)"),
        (lambda: trainer(model(tasks=[Task("click"), Task("cost", kind="regression")])),
         "tasks"),
        (lambda: trainer(model(tasks=[Task("click"), Task("price", kind="multiclass",
                                                          num_classes=3)])), "tasks"),
        (lambda: trainer(optimizer="sgd"), "Adam optimizer.*SGD"),
        (lambda: trainer(weighting="dwa"), "weighting"),
    ],
    ids=["architecture", "num_experts", "task-names", "task-kind", "optimizer", "weighting"],
)
def test_loading_into_another_setup_is_one_clear_error(saved, other, fragment):
    t = other()
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    with pytest.raises(MtlzooError, match=fragment):
        t.load(saved)
    assert all(torch.equal(v, t.model.state_dict()[k]) for k, v in before.items())


def test_a_checkpoint_is_checksummed_and_typed(saved):
    from mtlzoo.train import read_checkpoint

    raw = saved.read_bytes()
    checkpoint = read_checkpoint(saved)
    assert checkpoint["trainer"]["version"] >= 2 and b"sha256" in raw[:200]
    t = trainer()
    t.load(saved)
    assert dataclasses.is_dataclass(t.state) and t.state.epoch == 1 and t.state.step == 2


@pytest.mark.parametrize("bad", ["file-as-folder", "a-folder"])
def test_an_unwritable_checkpoint_path_fails_before_the_first_step(tmp_path, bad):
    (tmp_path / "notes.txt").write_text("a file")
    path = tmp_path / "notes.txt" / "run.pt" if bad == "file-as-folder" else tmp_path
    t = trainer()
    with pytest.raises(MtlzooError, match="checkpoint"):
        t.fit(data(), epochs=1, checkpoint=path)
    assert t.step == 0


class PoisonedSGD(torch.optim.SGD):
    """SGD whose second step leaves NaN weights, as a diverging run does."""

    def step(self, closure=None):
        super().step(closure)
        self.steps = getattr(self, "steps", 0) + 1
        if self.steps == 2:
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        p.fill_(math.nan)


def test_a_diverged_state_is_never_saved(tmp_path):
    path = tmp_path / "run.pt"
    t = trainer(optimizer=lambda params: PoisonedSGD(params, lr=1e-2))
    with pytest.raises(MtlzooError, match=r"step 2"):
        t.fit(data(), epochs=1, checkpoint=path, checkpoint_every=1)
    fresh = trainer(optimizer=lambda params: PoisonedSGD(params, lr=1e-2))
    fresh.load(path)  # the last good state: that of step 1
    assert fresh.step == 1
    assert all(v.isfinite().all() for v in fresh.model.state_dict().values())


def test_a_nan_loss_names_the_task_the_step_and_the_last_good_checkpoint(tmp_path):
    path = tmp_path / "run.pt"
    t = trainer()
    t.fit(data(), steps=2, checkpoint=path)
    bad = data()
    bad["x"][:] = math.nan
    with pytest.raises(MtlzooError, match=rf"'click'.*step 3.*{path.name}.*step 2"):
        t.fit(bad, epochs=1, checkpoint=path, checkpoint_every=1)


def test_resuming_with_a_new_lr_honours_it(saved):
    t = trainer(lr=1e-3)
    t.load(saved)  # saved with lr 1e-2
    assert [group["lr"] for group in t.optimizer.param_groups] == [1e-3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same data, epoch boundary: nothing to warn about
        t.fit(data(64), epochs=2)


def test_bad_sample_weights_name_their_column():
    x = torch.randn(32, D)
    t = trainer(weight_key="w")
    labels = {"click": (x[:, 0] > 0).long(), "price": x[:, 1]}
    for weights in (-torch.ones(32), torch.ones(32, 2)):
        with pytest.raises(MtlzooError, match="column 'w'"):
            t.fit({"x": x, **labels, "w": weights}, steps=1)


def test_a_fit_with_nothing_left_to_do_says_so():
    t = trainer()
    t.fit(data(64), steps=2)
    with pytest.warns(UserWarning, match="nothing to train at step 2.*steps=2 reached"):
        t.fit(data(64), steps=2)
    assert t.step == 2


# --- found by review: early stopping, loaders, per-task order, atomic failures -------------


def test_early_stopping_never_rewinds_a_run_that_only_paused():
    joint, held_out = data(128), data(64, seed=3)
    whole = trainer()
    whole.fit(joint, eval=held_out, steps=12, early_stopping="price/mse", patience=5)
    paused = trainer()
    paused.fit(joint, eval=held_out, steps=6, early_stopping="price/mse", patience=5)
    paused.fit(joint, eval=held_out, steps=12, early_stopping="price/mse", patience=5)
    for key, value in whole.model.state_dict().items():
        assert torch.equal(paused.model.state_dict()[key], value), key


def test_a_fit_without_early_stopping_keeps_its_own_weights():
    t = trainer()
    t.fit(data(128), eval=data(64, seed=3), epochs=2, early_stopping="price/mse")
    kept = t.state.stopping.weights
    t.fit(data(128), epochs=4)  # no early stopping asked: trained weights, not the kept ones
    assert t.state.stopping.epoch is not None and len(t.history) == 4
    assert any(not torch.equal(v, kept[k]) for k, v in t.model.state_dict().items())


@pytest.mark.parametrize("column", ["click/mse", "price/auc", "price/f1"])
def test_an_early_stopping_metric_the_task_does_not_have_is_refused(column):
    with pytest.raises(MtlzooError, match="early_stopping"):
        trainer().fit(data(), eval=data(64), epochs=1, early_stopping=column)


def test_early_stopping_on_a_task_the_eval_data_lacks_is_refused():
    per_task = {"click": {"x": torch.randn(40, D), "label": torch.ones(40).long()},
                "price": {"x": torch.randn(40, D), "label": torch.randn(40)}}
    with pytest.raises(MtlzooError, match=r"early_stopping.*'price'"):
        trainer().fit(per_task, eval={"click": per_task["click"]}, epochs=1,
                      early_stopping="price/mse")


def test_a_failed_fit_changes_nothing(tmp_path):
    t = trainer()
    t.fit(data(), eval=data(64), epochs=1, early_stopping="price/mse")
    before = dataclasses.replace(t.state.stopping)
    (tmp_path / "file").write_text("")
    with pytest.raises(MtlzooError, match="checkpoint"):
        t.fit(data(), eval=data(64), epochs=2, early_stopping="click/accuracy",
              checkpoint=tmp_path / "file" / "run.pt")
    assert t.state.stopping == before


def test_a_fixed_order_loader_with_dropout_resumes_exactly(tmp_path):
    rows = data(96)
    loader = torch.utils.data.DataLoader(
        [{k: v[i] for k, v in rows.items()} for i in range(96)], batch_size=32
    )
    whole = trainer(model(dropout=0.3))
    whole.fit(loader, epochs=2)
    first = trainer(model(dropout=0.3))
    first.fit(loader, steps=4, checkpoint=tmp_path / "run.pt")  # mid-epoch 2
    second = trainer(model(dropout=0.3))
    second.load(tmp_path / "run.pt")
    second.fit(loader, epochs=2)
    for key, value in whole.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[key], value), key


def per_task_data() -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    return {"click": {"x": torch.randn(70, D, generator=g), "label": torch.ones(70).long()},
            "price": {"x": torch.randn(100, D, generator=g), "label": torch.randn(100)}}


@pytest.mark.parametrize("sampling", ["round_robin", "temperature"])
def test_the_order_of_a_per_task_dict_does_not_matter(tmp_path, sampling):
    forward = per_task_data()
    backward = dict(reversed(list(forward.items())))
    whole = trainer(sampling=sampling)
    whole.fit(forward, epochs=2)
    first = trainer(sampling=sampling)
    first.fit(forward, steps=2, checkpoint=tmp_path / "run.pt")
    second = trainer(sampling=sampling)
    second.load(tmp_path / "run.pt")
    second.fit(backward, epochs=2)
    for key, value in whole.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[key], value), key


def test_a_mid_epoch_resume_with_another_temperature_is_refused(tmp_path):
    first = trainer(sampling="temperature", temperature=2.0)
    first.fit(per_task_data(), steps=2, checkpoint=tmp_path / "run.pt")
    second = trainer(sampling="temperature", temperature=5.0)
    second.load(tmp_path / "run.pt")
    with pytest.raises(MtlzooError, match="temperature"):
        second.fit(per_task_data(), epochs=1)


def rewrite(path, change) -> None:
    from mtlzoo.train import read_checkpoint, write_checkpoint

    payload = read_checkpoint(path)
    change(payload)
    write_checkpoint(path, payload)


@pytest.mark.parametrize(
    "change",
    [
        lambda p: p["rng"].pop("python"),
        lambda p: p["weighting"]["state"].update(bogus=torch.ones(5)),
        lambda p: p["optimizer"]["state"]["param_groups"][0]["params"].pop(),
        lambda p: p["trainer"].update(step="3"),
        lambda p: p["trainer"]["history"].append("a row"),
    ],
    ids=["rng", "weighting-state", "optimizer-group", "step-type", "history-row"],
)
def test_a_checksummed_file_with_wrong_contents_changes_nothing(saved, change):
    rewrite(saved, change)
    t = trainer()
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    rng = torch.get_rng_state()
    with pytest.raises(MtlzooError, match=saved.name):
        t.load(saved)
    assert all(torch.equal(v, t.model.state_dict()[k]) for k, v in before.items())
    assert torch.equal(torch.get_rng_state(), rng) and t.state.step == 0


def test_a_file_cut_inside_its_header_is_called_truncated(saved):
    saved.write_bytes(saved.read_bytes()[:30])
    with pytest.raises(MtlzooError, match="truncated"):
        trainer().load(saved)


def test_a_checkpoint_gets_the_usual_file_mode(saved):
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(saved.stat().st_mode) == 0o666 & ~umask


def test_fixed_weights_given_now_win_over_the_checkpoint(tmp_path):
    path = tmp_path / "run.pt"
    trainer(weighting={"click": 1.0, "price": 1.0}).fit(data(64), epochs=1, checkpoint=path)
    t = trainer(weighting={"click": 5.0, "price": 0.0})
    t.load(path)
    t.fit(data(64), epochs=2)
    assert list(t.history["price/weight"]) == [1.0, 0.0]


def test_a_non_finite_aux_loss_stops_the_step(monkeypatch):
    t = trainer()
    forward = t.model.forward

    def nan_aux(*args, **kwargs):
        out = forward(*args, **kwargs)
        return out._replace(aux_loss=out.aux_loss + math.nan)

    monkeypatch.setattr(t.model, "forward", nan_aux)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    with pytest.raises(MtlzooError, match=r"aux_loss is nan at step 1"):
        t.fit(data(), steps=1)
    assert all(torch.equal(v, t.model.state_dict()[k]) for k, v in before.items())
