"""posguard: open, verify, protect (stop-loss) and close crypto-futures positions.

Installed, the repository's three folders form this one namespace (pyproject's
``package-dir``): `posguard.streams` (the venue contract, its implementations, ingestion),
`posguard.actors` (the per-symbol actor and the Redis store) and `posguard.supervisor`
(process entry, supervision, audit, intake, command line). This file lives in
``supervisor/package_root/`` only so that the repository's top level keeps exactly the folders
its users asked for.
"""

from __future__ import annotations

from importlib import metadata

__all__ = ["__version__"]

try:
    __version__ = metadata.version("posguard")
except metadata.PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"
