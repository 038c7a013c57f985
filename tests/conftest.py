"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Real Criteo rows may not be redistributed: they stay in ../shared and tests skip without them.
CRITEO_SAMPLE = Path(
    os.environ.get("DMT_CRITEO_SAMPLE", REPO.parent / "shared/data/criteo/criteo_kaggle_sample_10000.txt")
)


@pytest.fixture
def criteo_sample() -> Path:
    if not CRITEO_SAMPLE.is_file():
        pytest.skip(f"real Criteo sample not found at {CRITEO_SAMPLE} (set DMT_CRITEO_SAMPLE)")
    return CRITEO_SAMPLE


@pytest.fixture(scope="session")
def synthetic_criteo(tmp_path_factory) -> Path:
    """A small generated Criteo-format file with planted groups (the project's own data)."""
    from dmt.data.synthetic import generate_criteo

    path = tmp_path_factory.mktemp("data") / "synthetic.tsv"
    generate_criteo(path, rows=6000, seed=7)
    return path
