"""Loss weighting and gradient balancing: turn per-task losses into one update.

``create_weighting(name, task_names, **options)`` builds a registered method
(``list_weightings()``); ``register_weighting`` adds one. Loss weightings (``equal``,
``fixed``, ``uncertainty``, ``dwa``, ``rlw``) scale the losses; gradient methods
(``gradnorm``, ``mgda``, ``pcgrad``, ``cagrad``, ``imtl``) combine the per-task gradients
of the shared parameters. The interface is in ``mtlzoo.weighting.base``.
"""

from mtlzoo.weighting.base import GradientWeighting, LossWeighting, Weighting
from mtlzoo.weighting.cagrad import CAGrad
from mtlzoo.weighting.gradnorm import GradNorm
from mtlzoo.weighting.imtl import IMTL
from mtlzoo.weighting.loss_based import DWA, RLW, Equal, Fixed, Uncertainty
from mtlzoo.weighting.mgda import MGDA
from mtlzoo.weighting.pcgrad import PCGrad
from mtlzoo.weighting.registry import (
    create_weighting,
    get_weighting_class,
    list_weightings,
    register_weighting,
)

__all__ = [
    "DWA",
    "IMTL",
    "MGDA",
    "RLW",
    "CAGrad",
    "Equal",
    "Fixed",
    "GradNorm",
    "GradientWeighting",
    "LossWeighting",
    "PCGrad",
    "Uncertainty",
    "Weighting",
    "create_weighting",
    "get_weighting_class",
    "list_weightings",
    "register_weighting",
]
