"""``python -m posguard``: the same as the ``posguard`` command."""

from __future__ import annotations

import sys

from posguard.supervisor.cli import main

if __name__ == "__main__":
    sys.exit(main())
