"""The docs stay in step with the code.

Every ``mtlzoo ...`` command that README.md, docs/*.md and benchmarks/README.md show (in
code blocks or inline code) parses with the real CLI parser (parsed only, never run); the
lists of architectures and weightings they give (tables, printed lists, "Registered as"
lines, lists after "architectures" or "weightings") match the registries, options included;
and counts in words ("seven architectures", "ten loss weightings") match the registry
sizes. Nothing here builds a model or trains.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import inspect
import io
import itertools
import re
import shlex
from pathlib import Path

import pytest

import mtlzoo
import mtlzoo.cli
import mtlzoo.models
from mtlzoo import _registry
from mtlzoo.weighting import get_weighting_class

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PAGES = [*DOCS, ROOT / "benchmarks" / "README.md"]
DOC_IDS = [str(p.relative_to(ROOT)) for p in DOCS]
PAGE_IDS = [str(p.relative_to(ROOT)) for p in PAGES]
INDEX = ROOT / "docs" / "index.md"

FENCE = re.compile(r"^```([\w-]*)[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")
COMMAND = re.compile(r"^(?:mtlzoo|python -m mtlzoo(?:\.cli)?)\s+(?=\S)")  # and what follows
TICKED = re.compile(r"`([^`]+)`")
NUMBERS = {
    word: n for n, word in enumerate((
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
        "eighteen", "nineteen", "twenty",
    ))
}
NUMBER = rf"(?:{'|'.join(NUMBERS)}|\d+)"
# "seven architectures"; "ten loss weightings", "ten loss-weighting and gradient-balancing
# methods": a count of every registered model / weighting.
MODEL_COUNT = re.compile(rf"\b({NUMBER})\s+architectures\b", re.IGNORECASE)
WEIGHTING_COUNT = re.compile(
    rf"\b({NUMBER})\s+((?:[\w-]+\s+){{0,4}}?)(weightings|methods)\b", re.IGNORECASE
)
# "seven architectures (`cgc`, ...)", "the weightings (`equal`, ...)": a complete list when
# the word before is a count or "the", otherwise (e.g. "loss weightings (...)") a subset.
LISTED = re.compile(r"(\S+)\s+(architectures|weightings)\s*\(([^()]*)\)", re.IGNORECASE)
# Options in inline code that belong to other programs than mtlzoo.
NOT_MTLZOO_OPTIONS = {"--no-deps": "pip's, in data_census.md"}


def _text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def _prose(text: str) -> str:
    """The page without its fenced code blocks."""
    return FENCE.sub("", text)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _commands(page: Path) -> list[str]:
    """Every ``mtlzoo ...`` command line shown on ``page``: lines of non-Python code blocks
    (their comments' inline code too) and inline code in the prose."""
    text = _text(page)
    found = []
    for language, block in FENCE.findall(text):
        if language == "python":
            continue
        for line in block.splitlines():
            code, _, comment = line.partition("#")
            if COMMAND.match(code.strip()):
                found.append(code.strip())
            found += [span for span in INLINE.findall(comment) if COMMAND.match(span)]
    found += [_one_line(span) for span in INLINE.findall(_prose(text))
              if COMMAND.match(_one_line(span))]
    return found


def _variants(command: str) -> list[list[str]]:
    """The argument lists one shown command stands for: ``[...]`` parts included, one list per
    ``a|b`` alternative, a trailing ``...`` dropped."""
    words = shlex.split(COMMAND.sub("", command).replace("[", " ").replace("]", " "))
    if words and words[-1] == "...":
        words.pop()
    return [list(choice) for choice in itertools.product(*(word.split("|") for word in words))]


def _parse_error(words: list[str]) -> str | None:
    """None when the real parser accepts ``words``, else what it printed. Words without an
    option name a command (``mtlzoo bench``): they must reach its ``--help``."""
    if not any(word.startswith("-") for word in words):
        words = [*words, "--help"]
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            mtlzoo.cli._parser().parse_args(words)
    except SystemExit as exit:
        if exit.code:
            return err.getvalue().strip() or f"exit status {exit.code}"
    return None


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _all_options(parser: argparse.ArgumentParser) -> set[str]:
    options = {flag for action in parser._actions for flag in action.option_strings}
    for sub in _subparsers(parser).values():
        options |= _all_options(sub)
    return options


def _tables(text: str) -> list[list[list[str]]]:
    """The Markdown tables of ``text``: rows of cells, the header row first, no rule row."""
    tables, rows = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not all(set(cell) <= set("-: ") for cell in cells):
                rows.append(cells)
        elif rows:
            tables.append(rows)
            rows = []
    return tables


def _names(cell: str) -> list[str]:
    return TICKED.findall(cell)


def _count(word: str) -> int:
    return int(word) if word.isdigit() else NUMBERS[word.lower()]


def _options(builder) -> dict[str, object]:
    """A builder's keyword-only options and their defaults."""
    return {p.name: p.default for p in inspect.signature(builder).parameters.values()
            if p.kind is p.KEYWORD_ONLY}


def _where(page: Path, text: str, position: int) -> str:
    return f"{page.relative_to(ROOT)}:{text.count(chr(10), 0, position) + 1}"


MODELS = mtlzoo.list_models()
WEIGHTINGS = mtlzoo.list_weightings()
ALIASES = dict(_registry._ALIASES)


# --- commands ------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_command_shown_parses(page):
    bad = []
    for command in _commands(page):
        for words in _variants(command):
            error = _parse_error(words)
            if error:
                bad.append(f"{command!r} as {words}: {error.splitlines()[-1]}")
    assert not bad, f"{page.name}: commands the CLI does not accept:\n" + "\n".join(bad)


def test_the_pages_show_commands():
    # the extraction itself works: these are on the pages today
    shown = {c for page in PAGES for c in _commands(page)}
    assert "mtlzoo train --model mmoe --data synthetic --weighting uncertainty --epochs 3" in shown
    assert "mtlzoo bench speed" in shown
    assert _variants("mtlzoo bench quality --suite synthetic|census [--size demo|full]") == [
        ["bench", "quality", "--suite", s, "--size", z]
        for s in ("synthetic", "census") for z in ("demo", "full")
    ]


def test_a_command_that_is_gone_fails():
    assert _parse_error(["speed"])
    assert _parse_error(["bench"]) is None  # a command group, named in the prose
    assert _parse_error(["train", "--model", "no_such_model"])
    assert _parse_error(["bench", "speed", "--no-such-option"])
    assert _parse_error(["bench", "speed", "--out", "x"]) is None


@pytest.mark.parametrize("page", DOCS, ids=DOC_IDS)
def test_every_option_named_alone_is_an_mtlzoo_option(page):
    known = _all_options(mtlzoo.cli._parser())
    spans = [_one_line(s) for s in INLINE.findall(_prose(_text(page)))]
    named = {span.split()[0] for span in spans if span.startswith("--")}
    unknown = sorted(named - known - set(NOT_MTLZOO_OPTIONS))
    assert not unknown, f"{page.name} names options no mtlzoo command has: {unknown}"


@pytest.mark.parametrize("page", DOCS, ids=DOC_IDS)
def test_a_list_of_the_commands_is_the_commands(page):
    # "the `mtlzoo` command (`list`, `train`, ...)": each entry a command path, all commands
    commands = set(_subparsers(mtlzoo.cli._parser()))
    text = _text(page)
    for match in re.finditer(r"`mtlzoo` command\s*\(([^()]*)\)", text):
        where = _where(page, text, match.start())
        listed = _names(match.group(1))
        for entry in listed:
            assert _parse_error(entry.split()) is None, (
                f"{where}: `{entry}` is not an mtlzoo command"
            )
        assert {entry.split()[0] for entry in listed} == commands, (
            f"{where}: lists {listed}, the commands are {sorted(commands)}"
        )


# --- architectures -------------------------------------------------------------------------


def _model_tables(page: Path) -> list[list[list[str]]]:
    registered = {*MODELS, *ALIASES}
    return [table for table in _tables(_text(page))
            if table[0][0] == "name"
            and any(set(_names(row[0])) & registered for row in table[1:])]


def test_the_readme_architecture_table_is_the_registry():
    tables = _model_tables(ROOT / "README.md")
    assert len(tables) == 1, "README.md should have one architecture table"
    header, *rows = tables[0]
    common = set(_names(header[2]))  # "options (besides `tower_dims`, ...)"
    listed, previous = [], set()
    for row in rows:
        name, *aliases = _names(row[0])
        assert name in MODELS, f"README.md lists {name!r}, not a registered model"
        for alias in aliases:
            assert ALIASES.get(alias) == name, f"README.md: {alias!r} is not an alias of {name!r}"
        options = set(_names(row[2])) | (previous if "the same" in row[2] else set())
        expected = set(_options(mtlzoo.get_model_builder(name))) - {"in_features", "tasks"}
        assert options | common == expected, (
            f"README.md: {name!r} options {sorted(options | common)}, it takes {sorted(expected)}"
        )
        listed.append(name)
        previous = options
    assert sorted(listed) == MODELS, f"README.md's table {sorted(listed)} != {MODELS}"
    assert len(listed) == len(set(listed))


def test_the_user_guide_names_every_architecture():
    named = set(TICKED.findall(_text(INDEX)))
    missing = [name for name in MODELS if name not in named]
    assert not missing, f"docs/index.md never names {missing}"


@pytest.mark.parametrize("page", [ROOT / "README.md", INDEX], ids=["README.md", "index.md"])
def test_every_docs_page_is_linked(page):
    links = set(re.findall(r"\]\(([\w./-]+\.md)(?:#[\w-]*)?\)", _text(page)))
    targets = {(page.parent / link).resolve() for link in links}
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md"))
               if p != page and p.resolve() not in targets]
    assert not missing, f"{page.name} links no {missing}"


def test_every_architecture_has_a_page_that_says_how_it_is_registered():
    builders = {id(mtlzoo.get_model_builder(name)) for name in MODELS}
    documented = set()
    for page in sorted((ROOT / "docs").glob("*.md")):
        text = _text(page)
        for match in re.finditer(r"Registered as (.*?)(?:\n\n|Back to)", text, re.DOTALL):
            where = _where(page, text, match.start())
            for name in _names(match.group(1)):
                if name.startswith("mtlzoo.models."):
                    cls = getattr(mtlzoo.models, name.rpartition(".")[2], None)
                    assert id(cls) in builders, f"{where}: {name} is not a registered model class"
                elif re.fullmatch(r"[a-z0-9_]+", name):
                    assert name in MODELS or name in ALIASES, f"{where}: {name!r} not registered"
                    documented.add(ALIASES.get(name, name))
    missing = [name for name in MODELS if name not in documented]
    assert not missing, f"no docs page says 'Registered as' for {missing}"


def _argument_tables(page: Path) -> list[list[list[str]]]:
    return [t for t in _tables(_text(page)) if t[0][:2] == ["argument", "default"]]


MODEL_PAGES = [p for p in sorted((ROOT / "docs").glob("*.md")) if _argument_tables(p)]


@pytest.mark.parametrize("page", MODEL_PAGES, ids=[p.name for p in MODEL_PAGES])
def test_an_architecture_pages_arguments_are_the_builders(page):
    assert page.stem in MODELS, f"{page.name} has an argument table but names no model"
    options = _options(mtlzoo.get_model_builder(page.stem))
    (_header, *rows), = _argument_tables(page)
    documented = {}
    for row in rows:
        (name,) = _names(row[0])
        documented[name] = row[1]
    assert list(documented) == list(options), f"{page.name}: arguments != {list(options)}"
    for name, cell in documented.items():
        default = options[name]
        if cell == "required":
            assert default is inspect.Parameter.empty, f"{page.name}: {name} has a default"
        else:
            assert ast.literal_eval(cell.strip("`")) == default, (
                f"{page.name}: {name} defaults to {default!r}, not {cell}"
            )


# --- weightings ----------------------------------------------------------------------------


def test_the_weighting_table_is_the_registry():
    tables = [t for t in _tables(_text(ROOT / "docs" / "weighting.md"))
              if t[0][:2] == ["name", "class"]]
    assert len(tables) == 1, "docs/weighting.md should have one table of the weightings"
    _, *rows = tables[0]
    listed = []
    for name_cell, class_cell, _kind, options_cell, *_ in rows:
        (name,), (class_name,) = _names(name_cell), _names(class_cell)
        assert name in WEIGHTINGS, f"weighting.md lists {name!r}, not a registered weighting"
        cls = get_weighting_class(name)
        assert class_name == cls.__name__, f"weighting.md: {name!r} is {cls.__name__}"
        options = _options(cls.__init__)
        documented = {}
        for option in _names(options_cell):
            key, equals, value = option.partition("=")
            documented[key] = ast.literal_eval(value) if equals else inspect.Parameter.empty
        assert set(documented) == set(options), (
            f"weighting.md: {name!r} options {sorted(documented)}, it takes {sorted(options)}"
        )
        for key, value in documented.items():
            if value is not inspect.Parameter.empty:
                assert options[key] == value, (
                    f"weighting.md: {name}'s {key} defaults to {options[key]!r}, not {value!r}"
                )
        listed.append(name)
        # one section a weighting
        assert re.search(rf"^### {re.escape(name)}$", _text(ROOT / "docs" / "weighting.md"),
                         re.MULTILINE), f"weighting.md has no section '### {name}'"
    assert sorted(listed) == WEIGHTINGS, f"weighting.md's table {sorted(listed)} != {WEIGHTINGS}"


# --- lists and counts in the prose ---------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_printed_lists_are_the_registry(page):
    # `print(mtlzoo.list_models())` followed by its output as a comment; an error message's
    # "Registered models: ..." (plus what the page registers itself)
    text = _text(page)
    for what, registered in (("models", MODELS), ("weightings", WEIGHTINGS)):
        for match in re.finditer(rf"list_{what}\(\)\)?\s*#\s*(\[[^\]]*\])", text):
            assert ast.literal_eval(match.group(1)) == registered, (
                f"{_where(page, text, match.start())}: list_{what}() prints {registered}"
            )
    code = "".join(block for language, block in FENCE.findall(text) if language == "python")
    own = re.findall(r"register_model\(\s*\"(\w+)\"", code)
    for match in re.finditer(r"Registered models: ([\w, ]+)", text):
        expected = sorted([*MODELS, *own])
        assert match.group(1).split(", ") == expected, (
            f"{_where(page, text, match.start())}: the message would list {', '.join(expected)}"
        )


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_listed_architectures_and_weightings_are_registered(page):
    text = _prose(_text(page))
    for match in LISTED.finditer(text):
        before, noun, inside = match.groups()
        where = _where(page, text, match.start())
        registered = MODELS if noun.lower() == "architectures" else WEIGHTINGS
        names = _names(inside)
        unknown = [name for name in names if name not in registered]
        assert not unknown, f"{where}: {unknown} are not registered {noun.lower()}"
        if before.lower() == "the" or re.fullmatch(NUMBER, before, re.IGNORECASE):
            assert sorted(names) == registered, f"{where}: lists {names}, not all of {registered}"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_counts_in_words_are_the_registry_sizes(page):
    text = _text(page)
    for match in MODEL_COUNT.finditer(text):
        assert _count(match.group(1)) == len(MODELS), (
            f"{_where(page, text, match.start())}: {_one_line(match.group(0))!r}, but "
            f"{len(MODELS)} architectures are registered"
        )
    for match in WEIGHTING_COUNT.finditer(text):
        if "weighting" not in match.group(0).lower():
            continue  # "five seeds", "two methods of ..."
        assert _count(match.group(1)) == len(WEIGHTINGS), (
            f"{_where(page, text, match.start())}: {_one_line(match.group(0))!r}, but "
            f"{len(WEIGHTINGS)} weightings are registered"
        )
