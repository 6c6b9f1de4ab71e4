"""Task columns tied by an L2 penalty: a StackedMLP that also measures how far apart its
groups' parameters are (soft parameter sharing, Duong et al., ACL 2015).

Axes: b batch, g group (a column), d input features (a layer's width in, its bias as one
more row), h hidden width; s and t two columns of a pair.
"""

from __future__ import annotations

from torch import Tensor

from mtlzoo.layers.axes import Spec, einsum_specs
from mtlzoo.layers.stacked import StackedMLP


@einsum_specs(
    Spec("b d, g d h -> b g h", "first layer, x (b, d) read by every column",
         "StackedLinear's mm"),
    Spec("b g d, g d h -> b g h", "every later layer (its d is the last layer's h)",
         "StackedLinear's baddbmm"),
    Spec("s d h, t d h -> s t",
         "pairwise_squared_distance: G, each layer's Gram matrix of the columns (the bias as "
         "row d+1); the squared distances summed over pairs s < t are T tr(G) - sum(G)",
         "G is not formed: T times the squared deviations from the mean column, summed"),
)
class TiedMLP(StackedMLP):
    """A ``StackedMLP`` of T columns (``"b d, g d h -> b g h"``, then
    ``"b g d, g d h -> b g h"``) with ``pairwise_squared_distance()``: the sum over column
    pairs s < t and layers of ``|W_s - W_t|^2 + |b_s - b_t|^2``.

    Its meaning is the Gram matrix ``"s d h, t d h -> s t"`` of each layer's weights (the
    bias as one more row of d): the sum over pairs is ``T tr(G) - sum(G)``. It is computed
    as ``T * sum_g |W_g - mean_g W|^2``, the same number without the cancellation of the Gram
    form and without a Python loop over pairs. One column, or no layer, gives 0.
    """

    def pairwise_squared_distance(self) -> Tensor:
        spread = sum((param - param.mean(0)).pow(2).sum()
                     for layer in self.layers for param in (layer.weight, layer.bias))
        return self.groups * spread
