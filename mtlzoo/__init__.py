"""mtlzoo: multi-task learning architectures with batched einsum kernels.

Start here:

* ``create_model(name, in_features=..., tasks=[Task(...), ...], **options)`` builds a
  registered architecture (``list_models()``); ``register_model`` adds one.
* Every model maps x (b, d) to one representation per task (b, t, h) and applies the same
  ``TaskHeads``; it returns ``ModelOutput(logits, gate_weights, aux_loss)``.
* ``mtlzoo.layers`` holds the batched kernels, ``mtlzoo.models`` one file per family,
  ``mtlzoo.reference`` the naive loop versions the tests and benchmarks compare against.
"""

from mtlzoo import models as _models  # noqa: F401  (import registers the architectures)
from mtlzoo._registry import create_model, get_model_builder, list_models, register_model
from mtlzoo.errors import MtlzooError
from mtlzoo.layers import TaskHeads
from mtlzoo.models import ModelOutput, MultiTaskModel
from mtlzoo.tasks import Task

__version__ = "0.1.0"

__all__ = [
    "ModelOutput",
    "MtlzooError",
    "MultiTaskModel",
    "Task",
    "TaskHeads",
    "__version__",
    "create_model",
    "get_model_builder",
    "list_models",
    "register_model",
]
