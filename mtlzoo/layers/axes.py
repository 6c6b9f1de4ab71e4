"""The axis legend of every einsum spec in mtlzoo, and the specs the batched kernels declare.

Every batched kernel in ``mtlzoo.layers`` declares what it computes as einsum specs in einops'
named-axis syntax (``"b d, g d o -> b g o"``), with ``@einsum_specs(Spec(...), ...)``, which
sets the kernel's ``SPECS``. The kernel's docstring and docs/kernels.md show the same
strings, and ``tests/test_einsum_specs.py`` checks, in float64, that each kernel's output
equals ``spec.einsum(...)`` (``einops.einsum`` with that spec), so neither page can drift
from the code. The kernels themselves run ``mm``/``baddbmm``/``torch.einsum``, not einops.

Letters (``AXES``)::

    b batch   d input features   h hidden width   k tower width   o output width
    e experts   t tasks   g a stacked group   a experts one gate may use
    s source column of a cross-stitch unit   l sequence length (reserved for encoders)
    c a DSelect-k gate's single-expert selectors (the paper's k)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from torch import Tensor

from mtlzoo.errors import MtlzooError

AXES: dict[str, str] = {
    "b": "batch",
    "d": "input features",
    "h": "hidden width (an expert's or column's output, the representation a tower reads)",
    "k": "tower width",
    "o": "output width",
    "e": "experts",
    "t": "tasks",
    "g": "a stacked group: experts, gates or tasks, whatever the module stacks",
    "a": "the experts one gate may use (a <= e, see the gate mask)",
    "s": "source column of a cross-stitch unit (its target column is t)",
    "l": "sequence length (reserved for encoders; no current kernel uses it)",
    "c": "a DSelect-k gate's single-expert selectors (the paper's k)",
}


@dataclass(frozen=True)
class Spec:
    """One einsum a kernel computes: ``pattern`` in einops' named-axis syntax, every axis a
    letter of ``AXES``; ``case``: when the kernel computes it; ``lowering``: how it runs.

    ``spec.einsum(*operands)`` evaluates the pattern with ``einops.einsum``: the plain-einsum
    meaning of the kernel, which the tests pin the kernel to.
    """

    pattern: str
    case: str
    lowering: str

    def __post_init__(self) -> None:
        inputs, arrow, output = self.pattern.partition("->")
        operands = [term.split() for term in inputs.split(",")]
        result = output.split()
        problem = None
        if not arrow or "->" in output or not result or any(not term for term in operands):
            problem = "it must read 'axes, axes, ... -> axes'"
        elif unknown := sorted({a for term in [*operands, result] for a in term} - AXES.keys()):
            problem = f"axes {unknown} are not in the legend {''.join(AXES)}"
        elif any(len(set(term)) != len(term) for term in [*operands, result]):
            problem = "an axis repeats within one term"
        elif missing := sorted(set(result) - {a for term in operands for a in term}):
            problem = f"output axes {missing} are in no input"
        if problem:
            raise MtlzooError(f"einsum spec {self.pattern!r}: {problem}")

    @property
    def inputs(self) -> tuple[tuple[str, ...], ...]:
        """The axes of each operand, in order."""
        return tuple(tuple(term.split()) for term in self.pattern.split("->")[0].split(","))

    @property
    def output(self) -> tuple[str, ...]:
        return tuple(self.pattern.split("->")[1].split())

    def einsum(self, *operands: Tensor) -> Tensor:
        """``einops.einsum(*operands, pattern)``."""
        import einops  # here, not at the top: ``import mtlzoo`` need not load it (~4-20 ms)

        return einops.einsum(*operands, self.pattern)


K = TypeVar("K", bound=Callable)


def einsum_specs(*specs: Spec) -> Callable[[K], K]:
    """Declares a kernel's (a class's or function's) specs: sets its ``SPECS``."""

    def declare(kernel: K) -> K:
        kernel.SPECS = specs
        return kernel

    return declare
