"""The import-linter contract in pyproject.toml (`make lint`, `make test`): imports point down the
layers console → gateway | config → billing → tenants (docs/design.md#apps-and-layers).

The tree as it is keeps the contract; a copy of it with one import pointing up breaks it, so the
check is known to be able to fail. Both run the real `lint-imports` in a subprocess (a second or so).
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APPS = ("console", "gateway", "config", "billing", "tenants")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_tree_keeps_the_layers():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "bad_import", "message"),
    [
        ("billing/selectors.py", "from console import analytics", "billing is not allowed to import console"),
        ("tenants/models.py", "import billing.models", "tenants is not allowed to import billing"),
        ("gateway/registry.py", "from config import schema", "gateway is not allowed to import config"),
    ],
)
def test_an_import_up_the_layers_breaks_the_contract(tmp_path, module, bad_import, message):
    for app in APPS:
        shutil.copytree(ROOT / app, tmp_path / app, ignore=shutil.ignore_patterns("__pycache__", "templates", "static"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / module
    # Inside a function, as lazy imports are written: they count all the same.
    path.write_text(path.read_text() + f"\n\ndef _up_the_layers():\n    {bad_import}  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert message in result.stdout
