"""The import directions of the code map hold (import-linter contracts in pyproject.toml)."""

from __future__ import annotations

import pkgutil
import tomllib
from pathlib import Path

import pytest
from importlinter.cli import lint_imports

import preservarium_pusher_api

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def test_every_import_contract_is_kept() -> None:
    """API ↛ connectors, connectors → core only, layers inside the API package, light core."""
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def test_connectors_contract_forbids_every_part_of_the_api_package_but_the_core() -> None:
    """A new module of the API package is forbidden to connectors until listed otherwise."""
    [contract] = [c for c in CONTRACTS["contracts"] if c["id"] == "connectors-core-only"]
    children = {
        f"preservarium_pusher_api.{module.name}"
        for module in pkgutil.iter_modules(preservarium_pusher_api.__path__)
    }
    forbidden = set(contract["forbidden_modules"])
    assert children - {"preservarium_pusher_api.core"} <= forbidden
    assert "preservarium_pusher_api.core" not in forbidden


def test_production_modules_stay_under_500_lines() -> None:
    """Modules split where their parts separate; none of the shipped code grows past 500."""
    shipped = [*ROOT.glob("preservarium_pusher_api/**/*.py"), *ROOT.glob("connectors/**/*.py")]
    shipped += [*ROOT.glob("pusher_cli/**/*.py"), *ROOT.glob("firmware/**/*.py")]
    too_long = {
        str(path.relative_to(ROOT)): lines
        for path in shipped
        if (lines := len(path.read_text().splitlines())) > 500
    }
    assert too_long == {}
