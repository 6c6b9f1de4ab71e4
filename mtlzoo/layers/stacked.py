"""Stacked linear and MLP layers: G independent layers held as one parameter each.

Axes (``mtlzoo.layers.axes.AXES``): b batch, g group (experts or tasks), d input features,
h hidden width, o output width.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from mtlzoo import _checks
from mtlzoo.errors import MtlzooError
from mtlzoo.layers.activations import Activation, make_activation
from mtlzoo.layers.axes import Spec, einsum_specs

GroupIndex = Sequence[int] | None
Norm = str | None
NORMS: tuple[Norm, ...] = (None, "batch", "layer")
# nn.BatchNorm1d's and nn.LayerNorm's defaults
NORM_EPS = 1e-5
BATCH_NORM_MOMENTUM = 0.1


def _identity(x: Tensor) -> Tensor:
    return x


@einsum_specs(
    Spec("b d, g d o -> b g o", "x (b, d), read by every group",
         "one mm, (b, d+1) @ (d+1, g*o): the bias rides as the weight's last row"),
    Spec("b g d, g d o -> b g o", "x (b, g, d): group g reads x[:, g]",
         "one baddbmm over g, bias fused (bmm without bias)"),
)
class StackedLinear(nn.Module):
    """G linear maps ``d -> o`` computed in one matmul, plus the bias (g, o).

    ``x`` of shape (b, d) is read by every group: ``"b d, g d o -> b g o"`` (one ``mm``).
    ``x`` of shape (b, g, d) gives group g its own input ``x[:, g]``:
    ``"b g d, g d o -> b g o"`` (one ``baddbmm``).
    ``index`` (group ids) computes only those groups, in that order. ``activation``, when
    given, is applied to the fresh matmul result before it is viewed as (b, g, o), so an
    in-place one (``nn.ReLU(inplace=True)``) needs no new tensor and no autograd view copy.
    Each slice is initialised like ``nn.Linear(d, o)``: U(-1/sqrt(d), 1/sqrt(d)).
    The batch size is read as ``x.shape[0]``, never ``len(x)`` (a Python int, which
    ``torch.export`` turns into a constant): b stays symbolic when traced.
    """

    def __init__(self, groups: int, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.groups = _checks.positive_int("groups", groups)
        self.in_features = _checks.positive_int("in_features", in_features)
        self.out_features = _checks.positive_int("out_features", out_features)
        self.weight = nn.Parameter(torch.empty(groups, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(groups, out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_features)  # nn.Linear's fan-in is d, not d * o
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(
        self,
        x: Tensor,
        index: GroupIndex = None,
        activation: Callable[[Tensor], Tensor] = _identity,
    ) -> Tensor:
        weight, bias = self.weight, self.bias
        if index is not None:
            weight = weight[index]
            bias = None if bias is None else bias[index]
        return _stacked_linear(x, weight, bias, activation)

    def extra_repr(self) -> str:
        return f"groups={self.groups}, in_features={self.in_features}, out={self.out_features}"


def _stacked_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    activation: Callable[[Tensor], Tensor] = _identity,
) -> Tensor:
    """``StackedLinear``'s computation on a weight (g, d, o) and bias (g, o) or None."""
    groups, in_features, out_features = weight.shape
    if x.dim() == 2 and x.shape[1] == in_features:
        # 'b d, g d o -> b g o' as one (b, d) @ (d, g*o) matmul. A bias rides along as the
        # weight's last row, read by a column of ones: no pass adds it or sums its gradient.
        flat_weight = weight.permute(1, 0, 2).reshape(in_features, -1)
        if bias is not None:
            flat_weight = torch.cat([flat_weight, bias.reshape(1, -1)])
            x = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
        return activation(x.mm(flat_weight)).view(x.shape[0], groups, out_features)
    if x.dim() == 3 and x.shape[1:] == (groups, in_features):
        # 'b g d, g d o -> b g o' as a bmm over g; the result is a (b, g, o) view of (g, b, o)
        by_group = x.transpose(0, 1)
        if bias is None:
            out = torch.bmm(by_group, weight)
        else:
            out = torch.baddbmm(bias.unsqueeze(1), by_group, weight)
        return activation(out).transpose(0, 1)
    raise MtlzooError(
        f"StackedLinear expects input (batch, {in_features}) or "
        f"(batch, {groups}, {in_features}), got {tuple(x.shape)}"
    )


class _StackedBatchNorm(nn.Module):
    """G ``nn.BatchNorm1d(h)``, one per group, as one ``F.batch_norm`` on (b, g*h): statistics
    per (group, feature) over the batch, running mean and variance (g, h) updated in train
    mode (momentum 0.1, eps 1e-5) and read in eval mode, affine weight and bias (g, h).
    ``index`` (group ids) normalises only those groups, reading and updating only their
    running statistics. A batch of one row in train mode is normalised with the running
    statistics and does not update them."""

    def __init__(self, groups: int, features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(groups, features))
        self.bias = nn.Parameter(torch.zeros(groups, features))
        self.register_buffer("running_mean", torch.zeros(groups, features))
        self.register_buffer("running_var", torch.ones(groups, features))

    def forward(self, x: Tensor, index: GroupIndex = None) -> Tensor:
        # one row has no batch variance (nn.BatchNorm1d raises): it is normalised with the
        # running statistics, which it leaves as they are (an epoch's last batch may be one)
        batch_statistics = self.training and x.shape[0] != 1
        weight, bias = self.weight, self.bias
        running_mean, running_var = self.running_mean, self.running_var
        if index is not None:  # gathered copies: the updates are written back below
            weight, bias = weight[index], bias[index]
            running_mean, running_var = running_mean[index], running_var[index]
        out = F.batch_norm(x.reshape(x.shape[0], -1), running_mean.view(-1),
                           running_var.view(-1), weight.reshape(-1), bias.reshape(-1),
                           batch_statistics, BATCH_NORM_MOMENTUM, NORM_EPS)
        if index is not None and batch_statistics:
            ids = torch.as_tensor(index, device=x.device)
            with torch.no_grad():
                self.running_mean.index_copy_(0, ids, running_mean)
                self.running_var.index_copy_(0, ids, running_var)
        return out.view(x.shape)


class _StackedLayerNorm(nn.Module):
    """G ``nn.LayerNorm(h)``, one per group: each (row, group) normalised over h by one
    ``F.layer_norm`` (eps 1e-5), then the group's affine weight and bias (g, h) in one
    ``addcmul``. ``index`` (group ids) uses only those groups' weight and bias."""

    def __init__(self, groups: int, features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(groups, features))
        self.bias = nn.Parameter(torch.zeros(groups, features))

    def forward(self, x: Tensor, index: GroupIndex = None) -> Tensor:
        weight, bias = self.weight, self.bias
        if index is not None:
            weight, bias = weight[index], bias[index]
        return torch.addcmul(bias, F.layer_norm(x, x.shape[-1:], eps=NORM_EPS), weight)


def stacked_norm(norm: Norm, groups: int, features: int) -> nn.Module | None:
    """G normalisations of ``features`` each, one op for all groups: ``"batch"`` G
    ``nn.BatchNorm1d``, ``"layer"`` G ``nn.LayerNorm``, None none (after checking ``norm``).
    Called as ``module(x, index)`` on x (b, g, features)."""
    if _checks.choice("norm", norm, NORMS) is None:
        return None
    return (_StackedBatchNorm if norm == "batch" else _StackedLayerNorm)(groups, features)


@einsum_specs(
    Spec("b d, g d h -> b g h", "first layer, x (b, d) read by every group",
         "StackedLinear's mm"),
    Spec("b g d, g d h -> b g h",
         "first layer with x (b, g, d), and every later layer (its d is the last layer's h)",
         "StackedLinear's baddbmm"),
)
class StackedMLP(nn.Module):
    """G independent MLPs (linear -> [norm ->] activation -> dropout per layer), one matmul
    a layer.

    The first layer reads (b, d) shared by every group, ``"b d, g d h -> b g h"``, or
    (b, g, d), one input per group, ``"b g d, g d h -> b g h"``; every later layer is the
    latter (its d is the previous layer's h). Each adds its bias (g, h) before the activation.
    The output is (b, g, dims[-1]). With no layers the input is returned unchanged.
    One activation module serves every layer and group (a learnable one is shared).

    ``norm`` (None, "batch" or "layer") puts a normalisation between each linear map and its
    activation, as torch-rechub's MLP does (linear -> norm -> activation -> dropout), one op
    for all groups: ``"batch"`` is one ``nn.BatchNorm1d(h)`` per group (statistics per group
    and feature over the batch; running statistics in train mode, used in eval mode; a batch
    of one row in train mode is normalised with them), ``"layer"`` one ``nn.LayerNorm(h)`` per
    group. Their parameters (and running statistics) are ``norms.<layer>.*``, each (g, h);
    with None there are none. ``index`` reads and updates only those groups' statistics.
    """

    def __init__(
        self,
        groups: int,
        in_features: int,
        dims: Sequence[int],
        activation: Activation = "relu",
        dropout: float = 0.0,
        norm: Norm = None,
    ) -> None:
        super().__init__()
        widths = (in_features, *_checks.layer_dims("dims", dims, allow_empty=True))
        self.groups = groups
        self.out_features = widths[-1]
        self.layers = nn.ModuleList(
            StackedLinear(groups, n_in, n_out) for n_in, n_out in pairwise(widths)
        )
        self.norm = _checks.choice("norm", norm, NORMS)
        self.norms: nn.ModuleList | None = None  # no state_dict keys without a norm
        if norm is not None:
            self.norms = nn.ModuleList(stacked_norm(norm, groups, width) for width in widths[1:])
        self.activation = make_activation(activation)
        p = _checks.probability("dropout", dropout)
        self.dropout = nn.Dropout(p) if p > 0 else nn.Identity()

    def forward(self, x: Tensor, index: GroupIndex = None) -> Tensor:
        if self.norms is None:
            for layer in self.layers:
                x = self.dropout(layer(x, index, self.activation))
            return x
        for layer, norm in zip(self.layers, self.norms, strict=True):
            x = self.dropout(self.activation(norm(layer(x, index), index)))
        return x


@einsum_specs(
    Spec("b d, g d h -> b g h",
         "first layer, x (b, d) read by the groups of every MLP (g: all of them)",
         "one mm on the weights concatenated over g"),
    Spec("b g d, g d h -> b g h", "every later layer",
         "one baddbmm on the weights concatenated over g"),
)
def run_jointly(mlps: Sequence[StackedMLP], x: Tensor) -> Tensor:
    """Several StackedMLPs reading the same x (b, d), as if they were one: (b, g, o), their
    groups in order (g = g_1 + g_2 + ...).

    When they have the same widths, dropout and a parameter-free activation of one kind, each
    layer's weights are concatenated over g and computed in one matmul,
    ``"b d, g d h -> b g h"`` then ``"b g d, g d h -> b g h"`` (PLE's first level: its task
    and shared experts read x; one ``mm``, no ``cat`` of their outputs). Otherwise each runs
    on its own and their outputs are concatenated (so too under FSDP2, whose units hold
    their parameters sharded until their own forward runs, and with a ``norm``: each MLP
    then runs one by one, its normalisation and running statistics its own).
    """
    first = mlps[0]
    alike = all(
        isinstance(mlp, StackedMLP)
        and [layer.weight.shape[1:] for layer in mlp.layers]
        == [layer.weight.shape[1:] for layer in first.layers]
        and [layer.bias is None for layer in mlp.layers]
        == [layer.bias is None for layer in first.layers]
        and repr((mlp.activation, mlp.dropout)) == repr((first.activation, first.dropout))
        and not any(True for _ in mlp.activation.parameters())
        and mlp.norms is None
        # FSDP2 holds a unit's parameters sharded until the unit's own forward runs
        and not any(isinstance(p, DTensor) for p in mlp.parameters())
        for mlp in mlps
    )
    if not alike or len(first.layers) == 0:
        return torch.cat([mlp(x) for mlp in mlps], dim=1)
    for depth, layer in enumerate(first.layers):
        layers = [mlp.layers[depth] for mlp in mlps]
        weight = torch.cat([layer.weight for layer in layers])
        bias = None if layer.bias is None else torch.cat([layer.bias for layer in layers])
        x = first.dropout(_stacked_linear(x, weight, bias, first.activation))
    return x
