"""The peers' MMoE, PLE and shared-bottom on census data (``mtlzoo.bench.peer_census``).

The first tests run without the peers. The rest need the ``[peers]`` extra (torch-rechub
and deepctr-torch) and skip without it; CI does not install it. The data is a tiny
census-shaped table (a ``CensusIncome`` with three categorical and two numeric columns),
so every run takes a fraction of a second.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch

import mtlzoo
from mtlzoo.bench import peer_census, peers
from mtlzoo.data.census_income import CensusIncome
from mtlzoo.encoders import TabularEncoder
from mtlzoo.errors import MtlzooError

CARDINALITIES = [5, 7, 3]
# small enough for seconds, with every structural choice of the census sizes; PLE with as
# many shared as per-task experts, which DeepCTR-Torch 0.3.0 can run
SMALL = {"num_experts": 3, "num_shared_experts": 2, "num_task_experts": 2,
         "expert_width": 6, "tower_width": 4}


def _split(rows: int, generator: torch.Generator) -> dict:
    codes = torch.stack([torch.randint(0, k, (rows,), generator=generator)
                         for k in CARDINALITIES], dim=1)
    numbers = torch.randn(rows, 2, generator=generator)
    noise = torch.randn(rows, 2, generator=generator)
    income = numbers[:, 0] + (codes[:, 0] == 1).float() + 0.5 * noise[:, 0] > 0.5
    marital = numbers[:, 1] - (codes[:, 1] == 2).float() + 0.5 * noise[:, 1] > 0
    return {"categorical": codes.numpy(), "numeric": numbers.numpy(),
            "income": income.long().numpy(), "marital": marital.long().numpy()}


@pytest.fixture(scope="module")
def census() -> CensusIncome:
    """Census-shaped data, splits as ``datasets.Dataset`` as ``census_income`` returns them
    (300 / 100 / 100 rows: no batch of one row, which BatchNorm1d refuses in training)."""
    import datasets

    generator = torch.Generator().manual_seed(0)
    splits = datasets.DatasetDict({
        name: datasets.Dataset.from_dict(_split(rows, generator))
        for name, rows in (("train", 300), ("validation", 100), ("test", 100))
    })
    return CensusIncome(
        splits=splits, tasks=[mtlzoo.Task("income", kind="binary"),
                              mtlzoo.Task("marital", kind="binary")],
        categorical_columns=["a", "b", "c"], cardinalities=CARDINALITIES,
        numeric_columns=["x", "y"], vocabularies={},
    )


def run(implementation: str, family: str, data, seed: int = 0, weighting: str = "equal"
        ) -> dict:
    return peer_census.run_peer(implementation, family, data, seed, weighting,
                                budget={"epochs": 1, "batch_size": 128}, **SMALL)


def assert_ran(result: dict) -> None:
    assert result["note"] == ""
    assert 0 <= result["main_auc"] <= 1 and 0 <= result["aux_auc"] <= 1
    assert result["best_epoch"] == 1 and result["train_s"] > 0


# --- without the peers ---------------------------------------------------------------------

@pytest.mark.parametrize("missing", ["torch_rechub", "deepctr_torch"])
@pytest.mark.parametrize("implementation", peers.PEERS)
def test_without_the_extra_a_peer_run_says_how_to_install_it(census, monkeypatch, missing,
                                                              implementation):
    monkeypatch.setitem(sys.modules, missing, None)  # import now raises ImportError
    with pytest.raises(MtlzooError, match=r"pip install 'mtlzoo\[peers\]'") as error:
        peer_census.run_peer(implementation, "mmoe", census, budget={"epochs": 1})
    assert missing in str(error.value) and "make bench-peers" in str(error.value)


def test_ours_runs_without_the_peers_and_is_built_as_the_census_suite_builds_it(census):
    assert_ran(run("ours", "mmoe", census))
    model = peer_census.build_model("ours", "ple", census, seed=3)
    torch.manual_seed(3)  # the census suite: seed, encoder, model
    encoder = TabularEncoder(CARDINALITIES, 2, embedding_dim=4)
    suite = mtlzoo.create_model("ple", tasks=census.tasks, encoder=encoder, tower_dims=(8,),
                                num_levels=2, num_shared_experts=4, num_task_experts=2,
                                expert_dims=(16,))
    ours, theirs = model.state_dict(), suite.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)


def test_census_config_has_the_census_sizes_and_refuses_unknown_ones():
    mmoe = peer_census.census_config("mmoe", 131)
    assert (mmoe.in_features, mmoe.num_tasks, mmoe.num_experts, mmoe.expert_width,
            mmoe.tower_width) == (131, 2, 8, 16, 8)
    ple = peer_census.census_config("ple", 131)
    assert (ple.num_levels, ple.num_shared_experts, ple.num_task_experts,
            ple.experts_per_level) == (2, 4, 2, 8)
    assert peer_census.census_config("shared_bottom", 131).expert_width == 113
    with pytest.raises(MtlzooError, match="num_expert"):
        peer_census.census_config("mmoe", 131, num_expert=4)
    with pytest.raises(MtlzooError, match="unknown family 'omoe'"):
        peer_census.census_config("omoe", 131)
    with pytest.raises(MtlzooError, match="unknown implementation 'keras'"):
        peer_census.build_model("keras", "mmoe", None)


# --- with the peers ([peers] extra) --------------------------------------------------------



def inputs(split, rows: int = 16) -> dict:
    part = split.with_format("torch")[:rows]
    return {"categorical": part["categorical"], "numeric": part["numeric"]}


@pytest.mark.parametrize("family", peers.FAMILIES)
@pytest.mark.parametrize("implementation", peers.PEERS)
def test_the_logits_are_the_logit_of_the_peers_probabilities(peers_installed, census,
                                                             implementation, family):
    model = peer_census.build_model(implementation, family, census, **SMALL)
    assert isinstance(model, peer_census.PeerModel) and model.peer is not None
    x = inputs(census.splits["test"], 64)
    model.eval()
    eps = peer_census.EPS
    for scale in (None, 3.0):  # as built; weights of N(0, 9), most probabilities clamped
        with torch.no_grad():
            if scale is not None:
                torch.manual_seed(0)
                for parameter in model.peer.parameters():
                    parameter.normal_(0, scale)
            out = model(x)
            features = model.encoder(x)
            p = model.peer({"x": features} if implementation == "torch-rechub" else features)
        assert p.shape == (64, 2) and out.gate_weights == {} and float(out.aux_loss) == 0
        assert list(out.logits) == ["income", "marital"]
        clamped = (p <= eps) | (p >= 1 - eps)
        assert bool(clamped.any()) == (scale is not None)
        for t, name in enumerate(out.logits):
            assert out.logits[name].shape == (64, 1)
            torch.testing.assert_close(out.logits[name][:, 0],
                                       torch.logit(p[:, t].clamp(eps, 1 - eps)))
            inside = ~clamped[:, t]
            torch.testing.assert_close(out.logits[name][inside, 0].sigmoid(), p[inside, t])
        assert out.logits["income"].abs().max() <= -math.log(eps) + 1e-3
    with torch.no_grad():
        only = model(x, tasks="marital")
    assert list(only.logits) == ["marital"]
    torch.testing.assert_close(only.logits["marital"], out.logits["marital"])


def test_our_bce_on_the_logits_is_the_peers_bce_with_its_gradient(peers_installed, census):
    model = peer_census.build_model("torch-rechub", "mmoe", census, **SMALL)
    x, y = inputs(census.splits["train"], 64), torch.randint(0, 2, (64, 2)).float()
    losses, grads = [], []
    for ours in (True, False):
        model.zero_grad()
        if ours:
            logits = torch.cat(list(model(x).logits.values()), dim=1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        else:
            loss = torch.nn.functional.binary_cross_entropy(
                model.probabilities(model.encoder(x)), y)
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("family", peers.FAMILIES)
@pytest.mark.parametrize("implementation", peers.IMPLEMENTATIONS)
def test_every_side_trains_an_epoch_and_is_scored(peers_installed, census, implementation, family):
    assert_ran(run(implementation, family, census))


@pytest.mark.parametrize("implementation", peers.PEERS)
def test_seeds_reproduce(peers_installed, census, implementation):
    first, again, other = (run(implementation, "mmoe", census, seed)
                           for seed in (1, 1, 2))
    for result in (first, again, other):
        del result["train_s"]
    assert first == again
    assert first != other


def test_a_seed_gives_every_side_the_same_encoder_and_generator_state(peers_installed, census):
    weights = []
    for implementation in peers.IMPLEMENTATIONS:
        torch.manual_seed(123)  # whatever came before
        model = peer_census.build_model(implementation, "mmoe", census, seed=5, **SMALL)
        weights.append(model.encoder.embedding.weight.detach())
        state = torch.get_rng_state()
        torch.manual_seed(5)
        assert torch.equal(state, torch.get_rng_state())  # reseeded after building
    assert all(torch.equal(weights[0], w) for w in weights[1:])


def test_shared_and_task_parameters_split_the_peer(peers_installed, census):
    for implementation in peers.PEERS:
        model = peer_census.build_model(implementation, "ple", census, **SMALL)
        shared, own = model.shared_parameters(), model.task_parameters()
        assert own and {id(p) for p in shared}.isdisjoint(id(p) for p in own)
        assert sorted(map(id, shared + own)) == sorted(map(id, model.parameters()))
    # a gradient-balancing method (per-task gradients of the shared parameters) trains it
    assert_ran(run("torch-rechub", "mmoe", census, weighting="pcgrad"))


def test_a_config_a_peer_cannot_run_gives_the_reason(peers_installed, census):
    # DeepCTR-Torch 0.3.0's PLE at the census sizes: 4 shared + 2 per task experts
    result = peer_census.run_peer("deepctr-torch", "ple", census, budget={"epochs": 1})
    assert all(math.isnan(result[column]) for column in peer_census.RESULTS_COLUMNS)
    assert result["note"].startswith("deepctr-torch's ple at 2 levels of 4 shared + 2 per "
                                     "task experts of 16, towers of 8: IndexError")
    assert "builds specific_expert_num shared experts" in result["note"]
    with pytest.raises(peer_census.Unbuildable, match="IndexError"):
        peer_census.build_model("deepctr-torch", "ple", census)
    # torch-rechub builds and runs the same configuration
    assert isinstance(peer_census.build_model("torch-rechub", "ple", census),
                      peer_census.PeerModel)


# --- the census suite with --peers ---------------------------------------------------------

def census_argv(tmp_path) -> list[str]:
    from tests.test_census_income import write_pair

    write_pair(tmp_path / "census")
    return ["bench", "quality", "--suite", "census", "--size", "demo", "--census-path",
            str(tmp_path / "census"), "--out", str(tmp_path), "--quiet", "--peers"]


def test_census_peers_without_the_extra_says_how_to_install_and_writes_nothing(
        tmp_path, monkeypatch, capsys):
    from mtlzoo import cli

    argv = census_argv(tmp_path)
    monkeypatch.setitem(sys.modules, "torch_rechub", None)  # import now raises ImportError
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("mtlzoo: error: ") and "pip install 'mtlzoo[peers]'" in err
    assert not list(tmp_path.glob("quality_census_*"))  # failed before anything ran


def test_peers_are_for_the_census_suite(tmp_path, capsys):
    from mtlzoo import cli

    argv = ["bench", "quality", "--suite", "synthetic", "--peers", "--out", str(tmp_path)]
    assert cli.main(argv) == 1
    assert "--peers is for --suite census" in capsys.readouterr().err


def test_census_peers_sit_beside_ours_in_one_table(tmp_path, peers_installed, capsys):
    import pandas as pd

    from mtlzoo import cli

    argv = census_argv(tmp_path)
    assert cli.main(argv) == 0
    table = pd.read_csv(tmp_path / "quality_census_demo_peers.csv")
    table["note"] = table.note.fillna("")  # no note: an empty cell
    assert set(table.implementation) == {"ours", *peers.PEERS}
    assert set(table.model) == set(peers.FAMILIES) and set(table.task_group) == {1, 2}
    assert len(table) == 2 * len(peers.FAMILIES) * len(peers.IMPLEMENTATIONS)
    ours = table[table.implementation == "ours"]
    assert (ours.vs_ours == 0).all() and (ours.note == "").all()
    # ours are the rows of our own census table, not a second run
    mine = pd.read_csv(tmp_path / "quality_census_demo.csv")
    for row in ours.itertuples():
        same = mine[(mine.task_group == row.task_group) & (mine.model == row.model)]
        assert row.main_best == pytest.approx(same.main_best.iloc[0])
    ple = table[(table.implementation == "deepctr-torch") & (table.model == "ple")]
    assert (ple.note.str.contains("IndexError")).all()  # deepctr-torch 0.3.0's PLE
    assert ple.main_mean.isna().all()  # no AUC where the peer could not run
    rechub = table[table.implementation == "torch-rechub"]
    assert rechub.main_mean.between(0, 1).all() and (rechub.note == "").all()
    runs = pd.read_csv(tmp_path / "quality_census_demo_peers_runs.csv")
    assert len(runs) == 2 * len(peers.FAMILIES) * len(peers.PEERS)  # ours not run again
    report = (tmp_path / "quality_census_demo_peers.md").read_text()
    assert f"Command: `mtlzoo {' '.join(argv)}`" in report
    assert f"torch-rechub {peers_installed['torch-rechub']}" in report
    assert cli.main(argv) == 0  # resumed: the note is read back as text
    again = pd.read_csv(tmp_path / "quality_census_demo_peers.csv")
    assert list(again.note.fillna("")) == list(table.note)
