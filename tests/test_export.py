"""mtlzoo.export: the exported program equals the eager model on batch sizes it was not
traced with, saved and loaded, in a process without mtlzoo; export_onnx through onnxruntime."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import mtlzoo
from mtlzoo import MtlzooError
from mtlzoo.encoders import SparseEncoder
from tests.conftest import IN_FEATURES, build
from tests.test_encoders import ENCODERS, TASKS, tabular_batch

EXPORT_ROWS = 4
NEW_ROWS = (7, 1)
TOLERANCE = {"rtol": 1e-6, "atol": 1e-6}  # float32: the same kernels, eager and exported


def features(rows: int) -> torch.Tensor:
    return torch.randn(rows, IN_FEATURES, generator=torch.Generator().manual_seed(rows))


def tokens(rows: int) -> torch.Tensor:
    """Token ids (rows, 7), right-padded with 0, of lengths 7, 6, ..., 1, 7, ..."""
    ids = torch.randint(2, 50, (rows, 7), generator=torch.Generator().manual_seed(rows))
    return ids.masked_fill(torch.arange(7) >= (7 - torch.arange(rows) % 7)[:, None], 0)


def dense(rows: int) -> torch.Tensor:
    return torch.randn(rows, 5, generator=torch.Generator().manual_seed(rows))


def sparse_batch(rows: int) -> dict[str, torch.Tensor]:
    """A single-hot and a multi-hot column (width 3, padded with -1) and 2 dense features."""
    g = torch.Generator().manual_seed(rows)
    tags = torch.randint(0, 20, (rows, 3), generator=g)
    tags = tags.masked_fill(torch.arange(3) >= (3 - torch.arange(rows) % 4)[:, None], -1)
    return {"user": torch.randint(0, 10, (rows,), generator=g), "tags": tags,
            "dense": torch.randn(rows, 2, generator=g)}


def sparse(backend: str, pooling: str = "sum") -> SparseEncoder:
    return SparseEncoder({"user": 10, "tags": 20}, 2, embedding_dim=3, backend=backend,
                         pooling=pooling)


ENCODER_CASES = {  # name: (encoder, batch of a given size)
    "dense": (ENCODERS["dense"][0], dense),
    "tabular": (ENCODERS["tabular"][0], tabular_batch),
    "text_lstm": (ENCODERS["text_lstm"][0], tokens),
    "text_mean": (ENCODERS["text_mean"][0], tokens),
    "sparse": (lambda: sparse("torch"), sparse_batch),
    "sparse_mean": (lambda: sparse("torch", "mean"), sparse_batch),
    "sparse_torchrec": (lambda: sparse("torchrec"), sparse_batch),
}


def on_encoder(encoder_name: str) -> mtlzoo.MultiTaskModel:
    torch.manual_seed(0)
    if encoder_name == "sparse_torchrec":
        pytest.importorskip("torchrec", reason="the [torchrec] extra is not installed")
    encoder = ENCODER_CASES[encoder_name][0]()
    return mtlzoo.create_model("mmoe", tasks=TASKS, encoder=encoder, num_experts=3,
                               expert_dims=(6,), tower_dims=(4,))


def check_program(model, make_batch, tmp_path) -> None:
    """Exported at EXPORT_ROWS rows: equal to eager at NEW_ROWS, before and after a save and
    load; the model is left in training mode, as it was given."""
    model.train()
    program = mtlzoo.export(model, make_batch(EXPORT_ROWS))
    assert model.training
    path = tmp_path / "model.pt2"
    torch.export.save(program, path)
    loaded = torch.export.load(path)
    model.eval()
    exported, reloaded = program.module(), loaded.module()
    for rows in NEW_ROWS:
        batch = make_batch(rows)
        expected = model(batch).logits
        assert list(exported(batch)) == list(model.task_names)
        torch.testing.assert_close(exported(batch), expected, **TOLERANCE)
        torch.testing.assert_close(reloaded(batch), expected, **TOLERANCE)


def test_every_model_exports_with_a_dynamic_batch(model_name, tmp_path):
    torch.manual_seed(0)
    check_program(build(model_name), features, tmp_path)


@pytest.mark.parametrize("encoder_name", list(ENCODER_CASES))
def test_every_encoder_exports_with_a_dynamic_batch(encoder_name, tmp_path):
    check_program(on_encoder(encoder_name), ENCODER_CASES[encoder_name][1], tmp_path)


def test_the_program_of_some_tasks_returns_theirs_in_that_order():
    model = build("mmoe").eval()
    program = mtlzoo.export(model, features(EXPORT_ROWS), tasks=["score", "income"])
    got = program.module()(features(7))
    assert list(got) == ["score", "income"]
    torch.testing.assert_close(got, model(features(7), ["score", "income"]).logits, **TOLERANCE)


def test_a_loaded_program_runs_in_a_process_without_mtlzoo(tmp_path):
    model = build("mmoe").eval()
    torch.export.save(mtlzoo.export(model, features(EXPORT_ROWS)), tmp_path / "model.pt2")
    torch.save(features(5), tmp_path / "x.pt")
    serve = textwrap.dedent("""
        import sys
        sys.modules["mtlzoo"] = None  # any import of mtlzoo fails
        import torch
        program = torch.export.load(sys.argv[1] + "/model.pt2")
        logits = program.module()(torch.load(sys.argv[1] + "/x.pt"))
        torch.save(logits, sys.argv[1] + "/logits.pt")
    """)
    subprocess.run([sys.executable, "-c", serve, str(tmp_path)], check=True, timeout=120)
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), model(features(5)).logits,
                               **TOLERANCE)


@pytest.mark.parametrize(
    ("example", "fragment"),
    [
        (features(1), "at least 2 rows"),
        ({"categorical": tabular_batch(4)["categorical"], "numeric": torch.zeros(3, 2)},
         "at least 2 rows"),
        (["a text"], "tokenize texts first"),
        (torch.zeros(4, IN_FEATURES + 1), f"(batch, {IN_FEATURES})"),
        (torch.tensor(1.0), "a batch axis"),
    ],
)
def test_bad_examples_are_refused(example, fragment):
    with pytest.raises(MtlzooError) as error:
        mtlzoo.export(build("mmoe"), example)
    assert fragment in str(error.value)


def test_an_unknown_task_and_a_foreign_module_are_refused():
    with pytest.raises(MtlzooError, match="unknown task 'scor'"):
        mtlzoo.export(build("mmoe"), features(4), tasks=["scor"])
    with pytest.raises(MtlzooError, match="MultiTaskModel, got Linear"):
        mtlzoo.export(torch.nn.Linear(IN_FEATURES, 1), features(4))


class ReadsAValue(torch.nn.Module):
    """An encoder that branches in Python on a value of its input."""

    out_features = IN_FEATURES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if float(x.sum()) > 0 else -x


def test_what_torch_cannot_trace_is_refused_naming_the_model():
    model = build("shared_bottom").set_encoder(ReadsAValue())
    with pytest.raises(MtlzooError, match=r"SharedBottom on ReadsAValue cannot be exported.*"
                                          r"depends on the input's values"):
        mtlzoo.export(model, features(4))


def test_top_k_dispatch_is_refused():
    """Each expert runs on the rows that chose it: sizes that the data decide."""
    with pytest.raises(MtlzooError, match=r"MMoE cannot be exported.*input's values"):
        mtlzoo.export(build("mmoe", gate="topk"), features(4))


def test_the_onnx_program_equals_eager_on_new_batch_sizes(tmp_path):
    """One model on the tabular encoder (a dict of integer and float columns): exporting to
    ONNX takes several seconds a model."""
    onnxruntime = pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    pytest.importorskip("onnxscript", reason="the [onnx] extra is not installed")
    model = on_encoder("tabular")
    path = mtlzoo.export_onnx(model, tabular_batch(EXPORT_ROWS), tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(node.name, node.shape) for node in session.get_inputs()] == [
        ("categorical", ["batch", 3]), ("numeric", ["batch", 2])]
    assert [(node.name, node.shape) for node in session.get_outputs()] == [
        ("a", ["batch", 1]), ("b", ["batch", 4])]
    model.eval()
    for rows in NEW_ROWS:
        batch = tabular_batch(rows)
        got = session.run(None, {name: column.numpy() for name, column in batch.items()})
        expected = model(batch).logits
        for name, logits in zip(model.task_names, got, strict=True):
            torch.testing.assert_close(torch.from_numpy(logits), expected[name],
                                       rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", mtlzoo.list_models())
def test_every_models_onnx_program_equals_eager_on_new_batch_sizes(name, tmp_path):
    """Each registered model on dense features (3-8 s a model here)."""
    onnxruntime = pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    pytest.importorskip("onnxscript", reason="the [onnx] extra is not installed")
    torch.manual_seed(0)
    model = build(name).eval()
    path = mtlzoo.export_onnx(model, features(EXPORT_ROWS), tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [node.name for node in session.get_outputs()] == list(model.task_names)
    for rows in NEW_ROWS:
        x = features(rows)
        got = session.run(None, {"inputs": x.numpy()})
        expected = model(x).logits
        for task, logits in zip(model.task_names, got, strict=True):
            torch.testing.assert_close(torch.from_numpy(logits), expected[task],
                                       rtol=1e-5, atol=1e-6)


def test_export_onnx_without_the_extra_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if it were not installed
    with pytest.raises(MtlzooError, match=r"pip install 'mtlzoo\[onnx\]'"):
        mtlzoo.export_onnx(build("mmoe"), features(4), tmp_path / "model.onnx")
