"""The peers' MMoE, PLE and shared-bottom on Census-Income, trained and scored as ours are.

``mtlzoo bench quality --suite census --peers`` sets torch-rechub's and DeepCTR-Torch's
architectures (built by :mod:`mtlzoo.bench.peers`) beside ours. Everything around the
architecture is ours, so the architecture is the only difference:

* the same split and features (:func:`mtlzoo.data.census_income`), through the same
  embeddings: a :class:`~mtlzoo.encoders.TabularEncoder` (embeddings of width 4 for every
  categorical column, a linear layer for the numeric ones) whose output, of width d, is the
  peer's one dense feature of width d (its own feature classes: ``DenseFeature`` /
  ``DenseFeat``); the encoder trains with the peer, as ours trains with our model;
* the same sizes (:data:`CENSUS_SIZES`, those of our census suite: MMoE section 5.1), as far
  as each peer can build them (below);
* the same trainer (:class:`mtlzoo.Trainer`: Adam lr 1e-3, batch 1024, the weighting asked
  for, early stopping on the main task's validation AUC, the best epoch's weights) and the
  same evaluation (``Trainer.evaluate`` on the test split).

:class:`PeerModel` makes a peer an mtlzoo model. The peers end in a sigmoid and return
probabilities p (b, T); the wrapper returns ``logit(p)`` for each task, p clamped to
[:data:`EPS`, 1 - :data:`EPS`] first (``torch.logit(p, eps=EPS)``). Our BCE with logits on
logit(p) is the peer's BCE on p, and its gradient with respect to the peer's last pre-sigmoid
value is the same p - y, wherever p lies inside the clamp; outside it (|logit| above about
16, where float32's sigmoid has saturated to or near 0 or 1) the gradient is zero, where the
peer's own BCE would give p - y through a sigmoid whose derivative has all but vanished. The
AUC reads the logits, a monotone function of p (values beyond the clamp tie).

Seeds. For seed s, every side (ours included, when built here) draws in this order:
``torch.manual_seed(s)``, then the encoder (so its initial embeddings are the same on every
side), then its own layers: ours from the generator as it stands (as the census suite does),
torch-rechub's after ``torch.manual_seed(s)`` (``peers.build_rechub``), DeepCTR-Torch's from
its ``seed=s`` argument, which its constructor passes to ``torch.manual_seed``, inside
``torch.random.fork_rng`` so the global generator is left as it was (``peers.build_deepctr``;
DeepCTR-Torch would otherwise reseed the global generator with its default 1024). After
building, ``torch.manual_seed(s)`` again, so the trainer (data order from ``seed=s``; RLW's
and PCGrad's generators drawn from the global one) starts from the same state whatever
was built. Nothing in training draws from the global generator otherwise (no dropout).

What the peers can build at the census sizes (torch-rechub 0.9.0, deepctr-torch 0.3.0):
every family of torch-rechub (with its BatchNorm1d after every linear layer and its gate
biases, its own design); DeepCTR-Torch's MMoE and shared-bottom, but not its PLE: 0.3.0 builds
``specific_expert_num`` shared experts a level instead of ``shared_expert_num``, so 4 shared
+ 2 per task fails in the forward (IndexError). :func:`run_peer` then returns NaN results and
a note saying so (:class:`Unbuildable` from :func:`build_model`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import fields

import torch
from torch import Tensor, nn

import mtlzoo
from mtlzoo.bench import peers
from mtlzoo.bench.census import RESULTS_COLUMNS, fit_and_score
from mtlzoo.errors import MtlzooError

EPS = 1e-7  # the clamp of the peers' probabilities before the logit (float32: 1 - EPS < 1)

# Our census suite's sizes (MMoE section 5.1): 8 experts of one 16-unit layer, towers of 8,
# a 113-unit shared bottom, PLE with 2 levels of 4 shared + 2 per task experts of 16.
CENSUS_SIZES = {
    "mmoe": {"num_experts": 8, "expert_width": 16, "tower_width": 8},
    "ple": {"num_levels": 2, "num_shared_experts": 4, "num_task_experts": 2,
            "expert_width": 16, "tower_width": 8},
    "shared_bottom": {"expert_width": 113, "tower_width": 8},  # the bottom's width
}
# which of a peer's parameters serve one task alone (the rest are shared, like our heads)
TASK_PARAMETERS = {
    "torch-rechub": ("towers.",),
    "deepctr-torch": ("tower_dnn.", "tower_dnn_final_layer.", "out."),
}


class Unbuildable(MtlzooError):
    """A peer cannot build, or cannot run, the configuration asked for; the message says
    why."""


class PeerModel(mtlzoo.MultiTaskModel):
    """A peer's multi-task architecture as an mtlzoo model, for our Trainer and evaluation.

    ``peer`` is the model :func:`mtlzoo.bench.peers.build` makes for ``implementation``, on
    one dense feature of width ``in_features``, with one binary output per task of
    ``tasks`` (in that order). ``encoder`` (optional) turns the raw input into that
    feature first. The forward returns ``ModelOutput({task: logit(p) (b, 1)}, {}, 0)``, p
    the peer's probability clamped to [EPS, 1 - EPS] (see the module docstring)."""

    def __init__(self, implementation: str, peer: nn.Module, *, in_features: int,
                 tasks: Sequence[mtlzoo.Task], encoder: nn.Module | None = None) -> None:
        super().__init__(in_features=in_features, tasks=tasks)
        if implementation not in peers.PEERS:
            raise MtlzooError(f"unknown peer {implementation!r}; one of {', '.join(peers.PEERS)}")
        other = [task.name for task in self.tasks if task.kind != "binary"]
        if other:
            raise MtlzooError(f"the peers' models are wrapped for binary tasks only; {other} "
                              "are not binary")
        self.implementation = implementation
        self.peer = peer
        if encoder is not None:
            self.set_encoder(encoder)

    def probabilities(self, x: Tensor) -> Tensor:
        """The peer's output (b, T) for the features ``x`` (b, in_features), in its own
        input format (a dict of feature tensors for torch-rechub)."""
        return self.peer({"x": x} if self.implementation == "torch-rechub" else x)

    def forward(self, x, tasks: str | Sequence[str] | None = None) -> mtlzoo.ModelOutput:
        if self.encoder is not None:
            x = self.encoder(x)
        self._check_input(x)
        task_ids = range(len(self.tasks)) if tasks is None else self._task_ids(tasks)
        logits = torch.logit(self.probabilities(x), eps=EPS)
        return mtlzoo.ModelOutput(
            {self.task_names[t]: logits[:, t:t + 1] for t in task_ids}, {}, x.new_zeros(())
        )

    def task_parameters(self) -> list[nn.Parameter]:
        """The peer's towers (and DeepCTR-Torch's output biases)."""
        return [p for name, p in self.peer.named_parameters() if self._own(name)]

    def shared_parameters(self) -> list[nn.Parameter]:
        """The encoder and every peer layer outside the towers."""
        encoder = [] if self.encoder is None else list(self.encoder.parameters())
        return encoder + [p for name, p in self.peer.named_parameters() if not self._own(name)]

    def _own(self, name: str) -> bool:
        return name.startswith(TASK_PARAMETERS[self.implementation])


def census_config(family: str, in_features: int, num_tasks: int = 2, **sizes) -> peers.Config:
    """The :class:`mtlzoo.bench.peers.Config` of ``family`` at the census sizes
    (:data:`CENSUS_SIZES`) on features of width ``in_features``; ``sizes`` overrides any
    field (a tiny model for a test)."""
    if family not in CENSUS_SIZES:
        raise MtlzooError(f"unknown family {family!r}; one of {', '.join(CENSUS_SIZES)}")
    known = {field.name for field in fields(peers.Config)} - {"family"}
    unknown = sorted(set(sizes) - known)
    if unknown:
        raise MtlzooError(f"unknown size(s) {unknown}; the sizes are {sorted(known)}")
    return peers.Config(family, **{**CENSUS_SIZES[family], "in_features": in_features,
                                   "num_tasks": num_tasks, **sizes})


def build_model(implementation: str, family: str, data, seed: int = 0,
                **sizes) -> mtlzoo.MultiTaskModel:
    """``implementation``'s ``family`` for the census ``data`` (a
    :class:`mtlzoo.data.census_income.CensusIncome`, or anything with its ``tasks``,
    ``cardinalities`` and ``numeric_columns``), behind our TabularEncoder (embeddings of
    width 4), its weights drawn from ``seed`` as the module docstring says. ``"ours"``
    builds our model as the census suite does. A peer that cannot build or run the
    configuration raises :class:`Unbuildable` with the reason; the peers missing raise
    MtlzooError saying how to install them."""
    from mtlzoo.encoders import TabularEncoder

    if implementation not in peers.IMPLEMENTATIONS:
        raise MtlzooError(f"unknown implementation {implementation!r}; one of "
                          f"{', '.join(peers.IMPLEMENTATIONS)}")
    if implementation != "ours":
        peers.require_peers()
    torch.manual_seed(seed)
    encoder = TabularEncoder(data.cardinalities, len(data.numeric_columns), embedding_dim=4)
    config = census_config(family, encoder.out_features, len(data.tasks), **sizes)
    if implementation == "ours":
        model = mtlzoo.create_model(family, tasks=data.tasks, encoder=encoder,
                                    tower_dims=(config.tower_width,), **_our_options(config))
    else:
        try:
            peer = peers.build(implementation, config, seed)
            _probe(implementation, peer, config)
        except Exception as error:
            raise Unbuildable(f"{implementation}'s {family} at {_sizes(config)}: "
                              f"{peers._describe(implementation, config, error)}") from error
        model = PeerModel(implementation, peer, in_features=encoder.out_features,
                          tasks=data.tasks, encoder=encoder)
    torch.manual_seed(seed)  # every side trains from the same generator state
    return model


def run_peer(implementation: str, family: str, data, seed: int = 0, weighting: str = "equal",
             budget: dict | None = None, **sizes) -> dict:
    """One census run of ``implementation``'s ``family``, built by :func:`build_model` and
    trained and scored as every run of the census suite
    (:func:`mtlzoo.bench.census.fit_and_score`; ``budget`` overrides its lr, batch size,
    epochs or patience, and ``sizes`` the census sizes, for a quick test). Returns its
    results and ``note``: "" when it ran; where a peer cannot build or run the
    configuration, the results are NaN and ``note`` says why."""
    try:
        model = build_model(implementation, family, data, seed, **sizes)
    except Unbuildable as error:
        return {**dict.fromkeys(RESULTS_COLUMNS, math.nan), "note": str(error)}
    return {**fit_and_score(model, data, weighting, seed, **(budget or {})), "note": ""}


def _our_options(config: peers.Config) -> dict:
    """Our model's options for ``config`` (those of the census suite at its sizes)."""
    width = (config.expert_width,)
    if config.family == "mmoe":
        return {"num_experts": config.num_experts, "expert_dims": width}
    if config.family == "ple":
        return {"num_levels": config.num_levels, "num_shared_experts": config.num_shared_experts,
                "num_task_experts": config.num_task_experts, "expert_dims": width}
    return {"bottom_dims": width}


def _probe(implementation: str, peer: nn.Module, config: peers.Config) -> None:
    """One forward on two rows of zeros, in eval mode and without gradients (no weight,
    BatchNorm statistic or generator changes): a peer that builds a model it cannot run
    (DeepCTR-Torch's PLE with more shared than per-task experts) raises here."""
    was_training = peer.training
    peer.eval()
    try:
        with torch.no_grad():
            x = torch.zeros(2, config.in_features)
            out = peer({"x": x} if implementation == "torch-rechub" else x)
        if tuple(out.shape) != (2, config.num_tasks):
            raise MtlzooError(f"its output has shape {tuple(out.shape)}, expected "
                              f"(2, {config.num_tasks})")
    finally:
        peer.train(was_training)


def _sizes(config: peers.Config) -> str:
    if config.family == "mmoe":
        experts = f"{config.num_experts} experts of {config.expert_width}"
    elif config.family == "ple":
        experts = (f"{config.num_levels} levels of {config.num_shared_experts} shared + "
                   f"{config.num_task_experts} per task experts of {config.expert_width}")
    else:
        experts = f"a bottom of {config.expert_width}"
    return f"{experts}, towers of {config.tower_width}"
