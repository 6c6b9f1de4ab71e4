"""Every batched kernel in ``mtlzoo.layers`` against the einsum specs it declares.

Each kernel's ``SPECS`` (``@einsum_specs``) are evaluated with ``einops.einsum`` in float64 on
random inputs whose axes all have different sizes, and the kernel's output must equal them.
Kernels are discovered by scanning the package, so a new one without specs, or without a
case here, fails. The docstrings and docs/kernels.md must show the same specs and legend.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import mtlzoo
import mtlzoo.layers
from mtlzoo.layers import (
    AXES,
    CrossStitchUnit,
    DSelectGates,
    SoftmaxGates,
    Spec,
    StackedLinear,
    StackedMLP,
    SubspaceStitchUnit,
    TaskHeads,
    TiedMLP,
    mix_experts,
    run_jointly,
)
from mtlzoo.layers.axes import einsum_specs
from mtlzoo.layers.topk import NoisyTopKGates, sparse_mixture

TOL = 1e-10
KERNELS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "kernels.md"

# public names in mtlzoo.layers that compute no einsum (each with the reason)
NOT_KERNELS = {
    "mtlzoo.layers.activations.make_activation": "builds an activation module",
    "mtlzoo.layers.stacked.stacked_norm": "builds a normalisation module (no einsum)",
}

# one size per axis, all different; an index of 7 of the g = 10 groups keeps g distinct too
SIZES = {"b": 13, "d": 5, "h": 6, "k": 4, "o": 3, "e": 11, "a": 2, "g": 10, "t": 9, "c": 8}
INDEX = [9, 0, 4, 2, 7, 1, 5]


def discover_kernels() -> dict[str, object]:
    """Every public class (an nn.Module) or function defined in a mtlzoo.layers module."""
    found = {}
    for info in pkgutil.iter_modules(mtlzoo.layers.__path__):
        if info.name == "axes":  # the legend itself
            continue
        module = importlib.import_module(f"mtlzoo.layers.{info.name}")
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if (inspect.isclass(obj) and issubclass(obj, nn.Module)) or inspect.isfunction(obj):
                found[f"{module.__name__}.{name}"] = obj
    return found


KERNELS = {
    name: kernel for name, kernel in discover_kernels().items() if name not in NOT_KERNELS
}
DECLARED = [
    (name, spec) for name, kernel in KERNELS.items() for spec in vars(kernel).get("SPECS", ())
]


class Einsum:
    """``einops.einsum`` through a kernel's own declared specs only, recording which ran.

    Every call checks that no two axes have the same size (``ties``: pairs that must).
    """

    def __init__(self, specs: tuple[Spec, ...], ties: tuple[str, ...] = ()) -> None:
        self.specs = {spec.pattern: spec for spec in specs}
        self.ties = set(ties)
        self.used: set[str] = set()

    def __call__(self, pattern: str, *operands: Tensor) -> Tensor:
        assert pattern in self.specs, f"{pattern!r} is not a declared spec"
        spec = self.specs[pattern]
        sizes: dict[str, int] = {}
        for axes, operand in zip(spec.inputs, operands, strict=True):
            assert operand.dtype == torch.float64
            for axis, size in zip(axes, operand.shape, strict=True):
                assert sizes.setdefault(axis, size) == size, f"{axis} bound to two sizes"
        by_size: dict[int, set[str]] = {}
        for axis, size in sizes.items():
            by_size.setdefault(size, set()).add(axis)
        for axes in by_size.values():
            assert len(axes) == 1 or axes <= self.ties, f"axes {axes} share a size: {sizes}"
        self.used.add(pattern)
        return spec.einsum(*operands)


def randn(*axes: str, **sizes: int) -> Tensor:
    return torch.randn(*(sizes[axis] if axis in sizes else SIZES[axis] for axis in axes))


def close(actual: Tensor, expected: Tensor) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, atol=TOL, rtol=0)


# ---- one case per kernel: runs the kernel on every path, each against its specs ----------

def case_stacked_linear(ein: Einsum) -> None:
    for bias in (True, False):
        layer = StackedLinear(SIZES["g"], SIZES["d"], SIZES["o"], bias=bias)
        for index in (None, INDEX):
            rows = slice(None) if index is None else index
            weight = layer.weight[rows]
            shift = 0 if layer.bias is None else layer.bias[rows]
            x = randn("b", "d")
            close(layer(x, index), ein("b d, g d o -> b g o", x, weight) + shift)
            xg = randn("b", "g", "d", g=len(weight))
            close(layer(xg, index), ein("b g d, g d o -> b g o", xg, weight) + shift)


def case_stacked_mlp(ein: Einsum) -> None:
    mlp = StackedMLP(SIZES["g"], SIZES["d"], (SIZES["h"], 12), activation="tanh")
    first, last = mlp.layers
    for index in (None, INDEX):
        rows = slice(None) if index is None else index
        w1, b1, w2, b2 = first.weight[rows], first.bias[rows], last.weight[rows], last.bias[rows]
        x = randn("b", "d")
        hidden = torch.tanh(ein("b d, g d h -> b g h", x, w1) + b1)
        expected = torch.tanh(ein("b g d, g d h -> b g h", hidden, w2) + b2)
        close(mlp(x, index), expected)
        xg = randn("b", "g", "d", g=len(w1))
        hidden = torch.tanh(ein("b g d, g d h -> b g h", xg, w1) + b1)
        expected = torch.tanh(ein("b g d, g d h -> b g h", hidden, w2) + b2)
        close(mlp(xg, index), expected)


def case_run_jointly(ein: Einsum) -> None:
    g = SIZES["g"]
    for activation in ("tanh", nn.PReLU):  # joined; a learnable one runs each on its own
        mlps = [StackedMLP(groups, SIZES["d"], (SIZES["h"], 12), activation=activation)
                for groups in (4, g - 4)]
        act = [mlp.activation for mlp in mlps]
        w1, b1, w2, b2 = (torch.cat([getattr(mlp.layers[i], name) for mlp in mlps])
                          for i in (0, 1) for name in ("weight", "bias"))
        x = randn("b", "d")
        hidden = ein("b d, g d h -> b g h", x, w1) + b1
        hidden = torch.cat([act[0](hidden[:, :4]), act[1](hidden[:, 4:])], dim=1)
        out = ein("b g d, g d h -> b g h", hidden, w2) + b2
        close(run_jointly(mlps, x), torch.cat([act[0](out[:, :4]), act[1](out[:, 4:])], dim=1))


def case_softmax_gates(ein: Einsum) -> None:
    g, e, a = SIZES["g"], SIZES["e"], SIZES["a"]
    allowed = torch.rand(g, e).argsort(dim=1)[:, :a]
    masked = torch.zeros(g, e, dtype=torch.bool).scatter(1, allowed, True)
    for mask in (None, masked):
        for bias in (False, True):
            gates = SoftmaxGates(g, SIZES["d"], e, mask, bias=bias)
            weight, gate_bias = gates.logits.weight, gates.logits.bias
            for index in (None, INDEX):
                rows = slice(None) if index is None else index
                w = weight[rows]
                shift = 0 if gate_bias is None else gate_bias[rows]
                experts = randn("b", "e", "h")

                def mixture(logits, mask=mask, rows=rows, experts=experts):
                    probs = torch.softmax(logits, dim=-1)
                    if mask is None:
                        weights = probs
                    else:
                        weights = probs.new_zeros(len(probs), len(probs[0]), e)
                        weights[:, mask[rows]] = probs.reshape(len(probs), -1)
                    return ein("b g e, b e h -> b g h", weights, experts), weights

                x = randn("b", "d")
                for out, want in zip(gates(x, experts, index),
                                     mixture(ein("b d, g d a -> b g a", x, w) + shift),
                                     strict=True):
                    close(out, want)
                xg = randn("b", "g", "d", g=len(w))
                for out, want in zip(gates(xg, experts, index),
                                     mixture(ein("b g d, g d a -> b g a", xg, w) + shift),
                                     strict=True):
                    close(out, want)


def case_mix_experts(ein: Einsum) -> None:
    weights, experts = randn("b", "g", "e"), randn("b", "e", "h")
    close(mix_experts(weights, experts), ein("b g e, b e h -> b g h", weights, experts))


def case_cross_stitch(ein: Einsum) -> None:
    unit = CrossStitchUnit(SIZES["t"])
    with torch.no_grad():  # not the symmetric initialisation: a transposed alpha would show
        unit.alpha.copy_(torch.randn_like(unit.alpha))
    x = randn("b", "s", "h", s=SIZES["t"])
    close(unit(x), ein("s t, b s h -> b t h", unit.alpha, x))


def case_subspace_stitch(ein: Einsum) -> None:
    columns, m, width = 3, 3, SIZES["h"]  # T*m = 9 subspaces, read as s and t
    unit = SubspaceStitchUnit(columns, m)
    with torch.no_grad():
        unit.alpha.copy_(torch.randn_like(unit.alpha))
    x = torch.randn(SIZES["b"], columns, m * width)
    # subspace i of column c is number c*m + i
    subspaces = torch.stack(
        [x[:, c, i * width:(i + 1) * width] for c in range(columns) for i in range(m)], dim=1
    )
    mixed = ein("s t, b s h -> b t h", unit.alpha, subspaces)
    close(unit(x), torch.cat([mixed[:, c * m:(c + 1) * m].flatten(1)[:, None]
                              for c in range(columns)], dim=1))


def case_tied_mlp(ein: Einsum) -> None:
    g = SIZES["g"]
    mlp = TiedMLP(g, SIZES["d"], (8, 12), activation="tanh")  # widths no other axis has
    first, last = mlp.layers
    for index in (None, INDEX):
        rows = slice(None) if index is None else index
        x = randn("b", "d")
        hidden = torch.tanh(ein("b d, g d h -> b g h", x, first.weight[rows]) + first.bias[rows])
        expected = torch.tanh(ein("b g d, g d h -> b g h", hidden, last.weight[rows])
                              + last.bias[rows])
        close(mlp(x, index), expected)
    distance = 0
    for layer in mlp.layers:
        with_bias = torch.cat([layer.weight, layer.bias[:, None]], dim=1)  # (g, d+1, h)
        gram = ein("s d h, t d h -> s t", with_bias, with_bias)
        distance = distance + g * gram.trace() - gram.sum()
    close(mlp.pairwise_squared_distance(), distance)


def case_dselect_gates(ein: Einsum) -> None:
    g, e, c = SIZES["g"], SIZES["e"], SIZES["c"]  # e = 11: m = 4 bits, 5 codes unused
    gates = DSelectGates(g, SIZES["d"], e, c, gamma=0.5)
    with torch.no_grad():  # not the near-uniform initialisation: some steps saturate
        gates.logits.weight.normal_()
    m = gates.num_bits
    codes = torch.tensor([[(j >> (m - 1 - bit)) & 1 for bit in range(m)] for j in range(e)])
    for index in (None, INDEX):
        rows = slice(None) if index is None else index
        x, experts = randn("b", "d"), randn("b", "e", "h")
        logits = (ein("b d, g d o -> b g o", x, gates.logits.weight[rows])
                  + gates.logits.bias[rows])
        steps = (logits[..., : c * m].unflatten(-1, (c, m)) / 0.5 + 0.5).clamp(0, 1)
        steps = 3 * steps**2 - 2 * steps**3
        factors = codes * steps.unsqueeze(-2) + (1 - codes) * (1 - steps.unsqueeze(-2))
        selectors = factors.prod(-1)
        mass = selectors.sum(-1, keepdim=True)
        selectors = torch.where(mass > 0, selectors / mass.clamp_min(1e-300), 1 / e)
        combination = torch.softmax(logits[..., c * m :], dim=-1)
        weights = ein("b g c, b g c e -> b g e", combination, selectors)
        mixed, out_weights, _ = gates(x, experts, index)
        close(out_weights, weights)
        close(mixed, ein("b g e, b e h -> b g h", weights, experts))


def case_task_heads(ein: Einsum) -> None:
    t = SIZES["t"]
    kinds = [mtlzoo.Task(f"task{i}", kind=("binary", "regression")[i % 2]) for i in range(t)]
    tasks = [*kinds[:-1], mtlzoo.Task("wide", kind="multiclass", num_classes=SIZES["o"])]
    for tower_dims in ((SIZES["k"], 12), ()):
        heads = TaskHeads(tasks, SIZES["h"], tower_dims, activation="tanh")
        for task_ids in (None, [8, 0, 4, 2, 7, 1, 5]):  # 7 of the 9: t stays distinct
            rows = slice(None) if task_ids is None else task_ids
            selected = range(t) if task_ids is None else task_ids
            reps = randn("b", "t", "h", t=len(selected))
            hidden = reps
            for layer in heads.towers.layers:
                mapped = ein("b t h, t h k -> b t k", hidden, layer.weight[rows])
                hidden = torch.tanh(mapped + layer.bias[rows])
            out = ein("b t k, t k o -> b t o", hidden, heads.output.weight[rows])
            out = out + heads.output.bias[rows]
            logits = heads(reps, task_ids)
            assert list(logits) == [tasks[i].name for i in selected]
            for i, task_id in enumerate(selected):
                task = tasks[task_id]
                close(logits[task.name], out[:, i, : task.out_features])


def case_noisy_topk_gates(ein: Einsum) -> None:
    g, e, a = SIZES["g"], SIZES["e"], SIZES["a"]
    allowed = torch.rand(g, e).argsort(dim=1)[:, :a]
    masked = torch.zeros(g, e, dtype=torch.bool).scatter(1, allowed, True)
    for mask, top_k in ((None, 3), (masked, 1)):
        ids = torch.arange(e).expand(g, e) if mask is None else masked.nonzero()[:, 1].view(g, a)
        width = e if mask is None else a
        gates = NoisyTopKGates(g, SIZES["d"], e, top_k, mask).train()
        for index in (None, INDEX):
            rows = slice(None) if index is None else index
            clean_w, noise_w = gates.logits.weight[rows].split(width, dim=-1)
            for x, pattern in ((randn("b", "d"), "b d, g d a -> b g a"),
                               (randn("b", "g", "d", g=len(clean_w)), "b g d, g d a -> b g a")):
                torch.manual_seed(1)
                routing = gates(x, index)
                torch.manual_seed(1)
                noise = torch.randn(x.shape[0], len(clean_w), width)
                logits = (ein(pattern, x, clean_w)
                          + noise * nn.functional.softplus(ein(pattern, x, noise_w)))
                values, positions = logits.topk(top_k, dim=-1)
                chosen = ids[rows].expand(x.shape[0], -1, -1).gather(-1, positions)
                weights = torch.zeros(x.shape[0], len(clean_w), e).scatter(
                    -1, chosen, torch.softmax(values, dim=-1))
                close(routing.weights, weights)
                assert torch.equal(routing.experts, chosen)


def case_sparse_mixture(ein: Einsum) -> None:
    b, g, e, d, h = SIZES["b"], SIZES["g"], SIZES["e"], SIZES["d"], SIZES["h"]
    experts = torch.rand(b, g, e).argsort(dim=-1)[..., :3]  # 3 distinct experts a (row, gate)
    expert_weights = torch.softmax(torch.randn(b, g, 3), dim=-1)
    weights = torch.zeros(b, g, e).scatter(-1, experts, expert_weights)
    mlps = [StackedMLP(groups, d, (h, 12), activation="tanh") for groups in (e, 4, e - 4)]

    def dense(mlp, x):
        (w1, b1), (w2, b2) = ((layer.weight, layer.bias) for layer in mlp.layers)
        first = "b d, e d h -> b e h" if x.dim() == 2 else "b e d, e d h -> b e h"
        hidden = torch.tanh(ein(first, x, w1) + b1)
        return torch.tanh(ein("b e d, e d h -> b e h", hidden, w2) + b2)

    shared, per_expert = randn("b", "d"), randn("b", "e", "d")
    for runs in ([(mlps[0], shared)], [(mlps[0], per_expert)],
                 [(mlps[1], shared), (mlps[2], randn("b", "e", "d", e=e - 4))]):
        outputs = torch.cat([dense(mlp, x) for mlp, x in runs], dim=1)
        mlp_list, inputs = zip(*runs, strict=True)
        close(sparse_mixture(experts, expert_weights, mlp_list, inputs),
              ein("b g e, b e h -> b g h", weights, outputs))


CASES: dict[object, tuple[Callable[[Einsum], None], tuple[str, ...]]] = {
    StackedLinear: (case_stacked_linear, ()),
    StackedMLP: (case_stacked_mlp, ()),
    run_jointly: (case_run_jointly, ()),
    SoftmaxGates: (case_softmax_gates, ()),
    mix_experts: (case_mix_experts, ()),
    CrossStitchUnit: (case_cross_stitch, ("s", "t")),  # alpha is (T, T): s and t are both T
    TaskHeads: (case_task_heads, ()),
    NoisyTopKGates: (case_noisy_topk_gates, ()),
    sparse_mixture: (case_sparse_mixture, ()),
    SubspaceStitchUnit: (case_subspace_stitch, ("s", "t")),  # alpha is (T*m, T*m)
    TiedMLP: (case_tied_mlp, ("s", "t")),  # a Gram matrix of the columns: s and t are both T
    DSelectGates: (case_dselect_gates, ()),
}


# ---- the tests ------------------------------------------------------------------------------

def test_every_kernel_is_found_and_declares_specs():
    assert set(NOT_KERNELS) <= set(discover_kernels()), "stale NOT_KERNELS entry"
    assert set(KERNELS.values()) == set(CASES), "a kernel without a case here, or the reverse"
    undeclared = [name for name, kernel in KERNELS.items() if not vars(kernel).get("SPECS")]
    assert not undeclared, f"declare einsum specs with @einsum_specs on {undeclared}"


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("name", sorted(KERNELS), ids=lambda n: n.rsplit(".", 1)[1])
def test_kernel_equals_einops_einsum_of_its_specs(name):
    kernel = KERNELS[name]
    run, ties = CASES[kernel]
    ein = Einsum(kernel.SPECS, ties)
    run(ein)
    unused = set(ein.specs) - ein.used
    assert not unused, f"{name}: specs never checked against the kernel: {unused}"


@pytest.mark.parametrize(
    ("name", "spec"), DECLARED, ids=[f"{n.rsplit('.', 1)[1]}:{s.pattern}" for n, s in DECLARED]
)
def test_spec_uses_legend_axes_and_is_in_the_docstring(name, spec):
    used = {axis for term in (*spec.inputs, spec.output) for axis in term}
    assert used <= AXES.keys()
    assert f'"{spec.pattern}"' in inspect.getdoc(KERNELS[name]), (
        f"{name}'s docstring does not show its spec {spec.pattern!r}"
    )


def docs_section(title: str) -> str:
    text = KERNELS_PAGE.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"docs/kernels.md has no section {title!r}"
    return match.group(1)


def table_rows(section: str) -> list[list[str]]:
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("|")
    ]
    return rows[2:]  # after the header and its rule


def test_docs_list_exactly_the_declared_specs():
    """The page's table holds each (kernel, pattern, case, lowering), backticks aside."""
    listed = {
        tuple(cell.replace("`", "") for cell in row)
        for row in table_rows(docs_section("Einsum specs"))
    }
    declared = {
        (name.rsplit(".", 1)[1], spec.pattern, spec.case, spec.lowering) for name, spec in DECLARED
    }
    assert listed == declared, (
        f"only on the page: {sorted(listed - declared)}; only in code: {sorted(declared - listed)}"
    )


def test_docs_legend_is_the_code_legend():
    rows = table_rows(docs_section("Axis letters"))
    assert {row[0].strip("`"): row[1].replace("`", "") for row in rows} == AXES


@pytest.mark.parametrize(
    "pattern",
    ["b x, g x o -> b g o", "b d g d o -> b g o", "b d, g d o -> b g z", "b b -> b",
     "b d -> b h", "b d,, g d o -> b g o", "b d -> ", "... d -> d"],
)
def test_a_spec_outside_the_legend_or_malformed_is_refused(pattern):
    with pytest.raises(mtlzoo.MtlzooError, match="einsum spec"):
        Spec(pattern, "", "")


def test_einsum_specs_sets_specs_and_returns_the_kernel():
    spec = Spec("b d, d o -> b o", "", "")

    @einsum_specs(spec)
    def kernel(x, w):
        return x @ w

    assert len(kernel.SPECS) == 1 and kernel.SPECS[0] is spec
    x, w = torch.randn(3, 4), torch.randn(4, 2)
    torch.testing.assert_close(spec.einsum(x, w), kernel(x, w))


def test_import_mtlzoo_does_not_load_einops():
    """``Spec.einsum`` imports einops when first called, not ``import mtlzoo``."""
    code = "import sys, mtlzoo; print('einops' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
