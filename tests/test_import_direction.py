"""The dependency rules of DESIGN.md section 3, checked on the source (every import, also the
ones inside functions), so a shortcut across rooms fails here rather than in a review.

* `posguard.streams` imports neither `posguard.actors` nor `posguard.supervisor`;
* `posguard.actors` imports neither `posguard.supervisor` nor ccxt;
* `posguard.actors.store` is the only importer of the Redis client (coredis);
* `posguard.client`, what strategies import, loads no ccxt (directly or through what it imports);
* production code never imports `tests`, and nothing imports the folders un-prefixed
  (``import supervisor`` would be Supervisord's package once installed).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"actors": "posguard.actors", "streams": "posguard.streams", "supervisor": "posguard.supervisor"}


def _module_name(path: Path) -> str:
    folder, *rest = path.relative_to(ROOT).with_suffix("").parts
    if folder == "supervisor" and rest[:1] == ["package_root"]:
        return ".".join(["posguard", *rest[1:]]).removesuffix(".__init__")
    return ".".join([FOLDERS[folder], *rest]).removesuffix(".__init__")


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


PRODUCTION = {
    _module_name(path): path for folder in FOLDERS for path in sorted((ROOT / folder).rglob("*.py"))
}


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _violations(module: str, imported: str) -> list[str]:
    rules = []
    if _within(module, "posguard.streams") and (
        _within(imported, "posguard.actors") or _within(imported, "posguard.supervisor")
    ):
        rules.append("posguard.streams imports neither actors nor supervisor")
    if _within(module, "posguard.actors") and (_within(imported, "posguard.supervisor") or _within(imported, "ccxt")):
        rules.append("posguard.actors imports neither supervisor nor ccxt")
    if _within(module, "posguard.client") and any(
        _within(imported, heavy) for heavy in ("ccxt", "posguard.streams.ccxt_adapter")
    ):
        rules.append("posguard.client (what strategies import) loads no ccxt")
    if _within(imported, "coredis") and not _within(module, "posguard.actors.store"):
        rules.append("only posguard.actors.store imports the Redis client")
    if _within(imported, "tests"):
        rules.append("production code never imports tests")
    if imported.split(".")[0] in FOLDERS:
        rules.append("imports use the posguard. prefix")
    return rules


def test_the_rules_see_every_module() -> None:
    assert "posguard.streams.venue.protocol" in PRODUCTION
    assert "posguard.actors.store" in PRODUCTION
    assert "posguard.supervisor.cli" in PRODUCTION
    assert "posguard.__main__" in PRODUCTION
    assert "posguard.client" in PRODUCTION


@pytest.mark.parametrize("module", sorted(PRODUCTION))
def test_imports_point_one_way(module: str) -> None:
    path = PRODUCTION[module]
    broken = [
        f"{path.relative_to(ROOT)}:{line}: imports {imported}: {rule}"
        for line, imported in _imports(path)
        for rule in _violations(module, imported)
    ]
    assert not broken, "\n".join(broken)


def test_the_checker_catches_each_rule() -> None:
    assert _violations("posguard.streams.ingestion.ingestor", "posguard.actors.records")
    assert _violations("posguard.streams.venue.events", "posguard.supervisor.config")
    assert _violations("posguard.actors.lifecycle", "ccxt.pro")
    assert _violations("posguard.actors.lifecycle.protection", "posguard.supervisor.engine")
    assert _violations("posguard.supervisor.intake", "coredis.exceptions")
    assert _violations("posguard.supervisor.demo", "tests.emulator_fixtures")
    assert _violations("posguard.supervisor.demo", "supervisor.config")
    assert _violations("posguard.client", "ccxt.pro")
    assert _violations("posguard.client", "coredis")
    assert not _violations("posguard.client", "posguard.actors.store.intent_stream")
    assert not _violations("posguard.actors.store.client", "coredis")
    assert not _violations("posguard.supervisor.engine", "posguard.actors.store")


def test_tests_use_the_installed_namespace() -> None:
    """Tests import posguard as a user would: never the bare folders."""
    broken = [
        f"{path.relative_to(ROOT)}:{line}: imports {imported}"
        for path in sorted((ROOT / "tests").rglob("*.py"))
        for line, imported in _imports(path)
        if imported.split(".")[0] in FOLDERS
    ]
    assert not broken, "\n".join(broken)


def test_a_strategy_importing_the_client_loads_no_ccxt() -> None:
    """Transitively too: the client reuses the intake's decoder, which must not drag the venue
    adapters (and ccxt's seconds of import) into every strategy."""
    loaded = subprocess.run([sys.executable, "-c", "import sys, posguard.client; print('ccxt' in sys.modules)"],
                            capture_output=True, text=True, timeout=60, check=True)
    assert loaded.stdout.strip() == "False"
