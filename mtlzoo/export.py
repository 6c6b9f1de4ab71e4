"""A trained model out of Python training code: ``torch.export`` with a dynamic batch, and ONNX.

``export(model, example_inputs)`` returns a ``torch.export.ExportedProgram`` that takes the
model's input, as the model takes it (features (b, d), token ids (b, l), or the dict of
columns the tabular and sparse encoders read), and returns the logits: a dict task name ->
(b, out_features), in the model's task order (or in ``tasks=`` order). The batch axis b is
symbolic, so one program serves every batch size, 1 included; every other axis (a token
length, a multi-hot width) is fixed at the example's size: pad to it. The program is traced
in eval mode (no dropout), holds the weights, and references no mtlzoo code:
``torch.export.save`` it, and ``torch.export.load(path).module()(inputs)`` serves it in a
process that imports only torch. ``export_onnx`` writes the same program as an ONNX file
(the ``mtlzoo[onnx]`` extra), one input per column and one output per task, named after
them.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.export import Dim, ExportedProgram
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode
from torch.utils._pytree import tree_leaves, tree_map

from mtlzoo.errors import MtlzooError
from mtlzoo.models.base import MultiTaskModel

ONNX_INSTALL = "pip install 'mtlzoo[onnx]'"
DATA_DEPENDENT = (" (a size or a branch depends on the input's values, as top-k expert dispatch "
                  "does: a program cannot hold that)")


class _Logits(nn.Module):
    """The model's logits dict alone (gate weights and the auxiliary loss are for training)."""

    def __init__(self, model: MultiTaskModel, tasks: list[str] | None) -> None:
        super().__init__()
        self.model, self.tasks = model, tasks

    def forward(self, inputs: Tensor | Mapping[str, Tensor]) -> dict[str, Tensor]:
        return self.model(inputs, self.tasks).logits


def export(
    model: MultiTaskModel,
    example_inputs: Tensor | Mapping[str, Tensor],
    *,
    tasks: str | Sequence[str] | None = None,
) -> ExportedProgram:
    """``model`` (its encoder included) as a program with a dynamic batch axis, returning the
    logits of every task (or of ``tasks``) as a dict name -> (b, out_features).

    ``example_inputs``: one batch of at least 2 rows, as the model takes it (torch
    specializes sizes 0 and 1); strings are not exportable: tokenize them first
    (``encoder.tokenizer.encode(texts)``). The model is traced in eval mode and left in the
    mode it was in. What torch cannot trace with a symbolic batch (a size that depends on the
    input's values, as top-k expert dispatch has) is refused with ``MtlzooError`` naming the
    model (and its encoder) and torch's reason.
    """
    wrapper = _wrapper(model, example_inputs, tasks)
    batch = Dim("batch")
    dynamic = tree_map(lambda tensor: {0: batch}, example_inputs)
    training = model.training
    model.eval()
    try:
        return torch.export.export(wrapper, (example_inputs,), dynamic_shapes=(dynamic,))
    except Exception as error:
        hint = (DATA_DEPENDENT if isinstance(error, GuardOnDataDependentSymNode) else "")
        raise MtlzooError(
            f"{_describe(model)} cannot be exported with a dynamic batch: "
            f"{type(error).__name__}: {_first_line(error)}{hint}"
        ) from error
    finally:
        model.train(training)


def export_onnx(
    model: MultiTaskModel,
    example_inputs: Tensor | Mapping[str, Tensor],
    path: str | Path,
    *,
    tasks: str | Sequence[str] | None = None,
) -> Path:
    """Write ``export(model, example_inputs, tasks=tasks)`` to ``path`` as an ONNX model
    (``torch.onnx.export(..., dynamo=True)``; the ``mtlzoo[onnx]`` extra) and return the path.

    Its inputs are named ``"inputs"`` for a tensor, after the columns for a dict (in the
    example's key order); its outputs after the tasks, each (batch, out_features), the axis
    ``"batch"`` symbolic.
    """
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise MtlzooError(f"export_onnx needs {' and '.join(missing)}: {ONNX_INSTALL}")
    program = export(model, example_inputs, tasks=tasks)
    path = Path(path)
    input_names = (list(example_inputs) if isinstance(example_inputs, Mapping)
                   else ["inputs"])
    output_names = (list(model.task_names) if tasks is None
                    else [tasks] if isinstance(tasks, str) else list(tasks))
    try:
        onnx_program = torch.onnx.export(
            program, dynamo=True, input_names=input_names, output_names=output_names,
            dynamic_shapes=(tree_map(lambda tensor: {0: "batch"}, example_inputs),),  # names
            verbose=False)
    except Exception as error:
        raise MtlzooError(
            f"{_describe(model)} cannot be exported to ONNX: "
            f"{type(error).__name__}: {_first_line(error)}"
        ) from error
    onnx_program.save(path)
    return path


def _wrapper(model: MultiTaskModel, example_inputs: object, tasks: object) -> _Logits:
    """The logits module, once the model has run on the example eagerly (its own checks
    name a bad input or task)."""
    if not isinstance(model, MultiTaskModel):
        raise MtlzooError(f"export needs an mtlzoo MultiTaskModel, got {type(model).__name__}")
    if not isinstance(example_inputs, Tensor | Mapping):
        hint = (" (tokenize texts first: encoder.tokenizer.encode(texts))"
                if isinstance(example_inputs, Sequence) else "")
        raise MtlzooError(f"example_inputs must be a tensor or a dict of tensors{hint}, got "
                          f"{type(example_inputs).__name__}")
    leaves = tree_leaves(example_inputs)
    if not leaves or not all(isinstance(leaf, Tensor) and leaf.dim() for leaf in leaves):
        raise MtlzooError("example_inputs must hold tensors with a batch axis, got "
                          f"{tree_map(_shape, example_inputs)}")
    rows = {leaf.shape[0] for leaf in leaves}
    if len(rows) > 1 or min(rows) < 2:
        raise MtlzooError(f"example_inputs must be one batch of at least 2 rows (torch "
                          f"specializes sizes 0 and 1), got {tree_map(_shape, example_inputs)}")
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            names = list(model(example_inputs, tasks).logits)
    finally:
        model.train(training)
    return _Logits(model, None if tasks is None else names)


def _describe(model: MultiTaskModel) -> str:
    encoder = model.encoder
    return type(model).__name__ + ("" if encoder is None else f" on {type(encoder).__name__}")


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0]


def _shape(leaf: object) -> object:
    return tuple(leaf.shape) if isinstance(leaf, Tensor) else type(leaf).__name__
