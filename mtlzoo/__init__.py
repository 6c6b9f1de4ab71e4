"""mtlzoo: multi-task learning architectures with batched einsum kernels.

Start here:

* ``create_model(name, in_features=..., tasks=[Task(...), ...], **options)`` builds a
  registered architecture (``list_models()``); ``register_model`` adds one.
* Every model maps x (b, d) to one representation per task (b, t, h) and applies the same
  ``TaskHeads``; it returns ``ModelOutput(logits, gate_weights, aux_loss)``.
* ``Trainer(model, weighting=...)`` minimises ``sum_t w_t L_t`` with Adam in both data
  regimes (one dataset labelled for every task, or one dataset per task);
  ``list_weightings()`` names the loss-weighting and gradient-balancing methods.
* ``export(model, example)`` / ``export_onnx``: a program to serve (docs/serving.md).
* ``mtlzoo.layers`` holds the batched kernels, ``mtlzoo.models`` one file per family,
  ``mtlzoo.reference`` the naive loop versions the tests and benchmarks compare against,
  ``mtlzoo.weighting`` the weighting methods, ``mtlzoo.losses`` and ``mtlzoo.metrics``
  what the trainer computes per task, ``mtlzoo.data`` generated data and batching,
  ``mtlzoo.tokenizer`` the word tokenizer of the text data and encoder,
  ``mtlzoo.train`` the trainer's parts (its loop, one step, its state, checkpoints),
  ``mtlzoo.memory`` a process setting that makes large CPU batches faster,
  ``mtlzoo.diagnostics`` what a run's gates and task gradients do (expert load, collapse,
  gradient conflict, loss ratios; ``Trainer(diagnostics_every=N)``).
"""

from mtlzoo import models as _models  # noqa: F401  (import registers the architectures)
from mtlzoo._registry import create_model, get_model_builder, list_models, register_model
from mtlzoo.errors import MtlzooError
from mtlzoo.export import export, export_onnx
from mtlzoo.layers import TaskHeads
from mtlzoo.models import ModelOutput, MultiTaskModel
from mtlzoo.tasks import Task
from mtlzoo.train import Trainer
from mtlzoo.weighting import (
    Weighting,
    create_weighting,
    list_weightings,
    register_weighting,
)

__version__ = "0.1.0"

__all__ = [
    "ModelOutput",
    "MtlzooError",
    "MultiTaskModel",
    "Task",
    "TaskHeads",
    "Trainer",
    "Weighting",
    "__version__",
    "create_model",
    "create_weighting",
    "export",
    "export_onnx",
    "get_model_builder",
    "list_models",
    "list_weightings",
    "register_model",
    "register_weighting",
]
