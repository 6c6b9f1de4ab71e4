"""Every Python example in README.md and docs/ runs (each page's blocks in one namespace)."""

from __future__ import annotations

import re
from pathlib import Path

import datasets
import pytest
import torch

from mtlzoo import _registry

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_examples_run(page, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    # an example may register a model: keep it out of the registry the other tests see
    monkeypatch.setattr(_registry, "_MODELS", dict(_registry._MODELS))
    monkeypatch.setattr(_registry, "_ALIASES", dict(_registry._ALIASES))
    blocks = BLOCK.findall(page.read_text())
    namespace: dict = {}
    previous = torch.get_default_dtype()
    try:
        for code in blocks:
            exec(compile(code, f"{page.name}", "exec"), namespace)
    finally:
        torch.set_default_dtype(previous)
