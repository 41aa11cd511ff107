"""What `pip install .` puts into site-packages: one `posguard` namespace, every sub-package.

pyproject.toml lists the packages and maps them onto the repository's folders by hand
(``package-dir``); a sub-package added to a folder but not to that list would be missing from
every real install while the editable install the tests use still finds it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _package_of(directory: Path) -> str:
    for name, folder in sorted(SETUPTOOLS["package-dir"].items(), key=lambda item: -len(item[1])):
        base = ROOT / folder
        if directory == base or base in directory.parents:
            rest = directory.relative_to(base).parts
            return ".".join([name, *rest])
    raise AssertionError(f"{directory} is in no mapped folder")


def test_every_package_folder_is_installed() -> None:
    on_disk = {
        _package_of(init.parent)
        for folder in ("actors", "streams", "supervisor")
        for init in (ROOT / folder).rglob("__init__.py")
        if "package_root" not in init.parent.relative_to(ROOT).parts
    } | {"posguard"}
    assert on_disk == set(SETUPTOOLS["packages"])


def test_nothing_of_ours_installs_top_level() -> None:
    assert {package.split(".")[0] for package in SETUPTOOLS["packages"]} == {"posguard"}
    assert SETUPTOOLS["package-dir"]["posguard"] == "supervisor/package_root"


def test_the_strategies_client_installs_as_posguard_client() -> None:
    """``posguard.client`` is a module of the root package (no folder of its own at the top)."""
    assert "posguard" in SETUPTOOLS["packages"]
    assert (ROOT / SETUPTOOLS["package-dir"]["posguard"] / "client.py").is_file()
