"""Model-agnostic batched kernels. Nothing here imports ``mtlzoo.models``."""

from mtlzoo.layers.activations import ACTIVATIONS, make_activation
from mtlzoo.layers.axes import AXES, Spec, einsum_specs
from mtlzoo.layers.cross_stitch import CrossStitchUnit
from mtlzoo.layers.dselect import DSelectGates
from mtlzoo.layers.gates import SoftmaxGates, mix_experts
from mtlzoo.layers.heads import TaskHeads
from mtlzoo.layers.sluice import SubspaceStitchUnit
from mtlzoo.layers.stacked import StackedLinear, StackedMLP, run_jointly
from mtlzoo.layers.tied import TiedMLP
from mtlzoo.layers.topk import NoisyTopKGates, TopKRouting, sparse_mixture

__all__ = [
    "ACTIVATIONS",
    "AXES",
    "CrossStitchUnit",
    "DSelectGates",
    "NoisyTopKGates",
    "SoftmaxGates",
    "Spec",
    "StackedLinear",
    "StackedMLP",
    "SubspaceStitchUnit",
    "TaskHeads",
    "TiedMLP",
    "TopKRouting",
    "einsum_specs",
    "make_activation",
    "mix_experts",
    "run_jointly",
    "sparse_mixture",
]
