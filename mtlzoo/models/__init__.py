"""The registered architectures, one family a file. Importing a file registers its models."""

from mtlzoo.models.aitm import AITM
from mtlzoo.models.base import ModelOutput, MultiTaskModel
from mtlzoo.models.cross_stitch import CrossStitch
from mtlzoo.models.dselect_k import DSelectK
from mtlzoo.models.esmm import ESMM
from mtlzoo.models.l2_constrained import L2Constrained
from mtlzoo.models.mmoe import MMoE, OMoE
from mtlzoo.models.mtan import MTAN
from mtlzoo.models.ple import CGC, PLE
from mtlzoo.models.shared_bottom import SharedBottom
from mtlzoo.models.single_task import SingleTask
from mtlzoo.models.sluice import Sluice

__all__ = [
    "AITM",
    "CGC",
    "ESMM",
    "MTAN",
    "PLE",
    "CrossStitch",
    "DSelectK",
    "L2Constrained",
    "MMoE",
    "ModelOutput",
    "MultiTaskModel",
    "OMoE",
    "SharedBottom",
    "SingleTask",
    "Sluice",
]
