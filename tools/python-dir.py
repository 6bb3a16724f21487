# SPDX-License-Identifier: LGPL-2.1-or-later
"""Print where `make install` puts the mdevd package for PREFIX (argv[1]), for this Python.

A directory on this interpreter's own path directly under PREFIX wins (Debian's
/usr/lib/python3/dist-packages for /usr, /usr/local/lib/python3.X/dist-packages for
/usr/local), so the package is found without help; otherwise PREFIX/lib/pythonX.Y/site-packages,
which the installed launchers add to their path.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path


def python_dir(prefix: Path) -> Path:
    for entry in sys.path:
        path = Path(entry)
        directly_under = path.is_relative_to(prefix) and path.relative_to(prefix).parts[:1] == (
            "lib",
        )
        if path.name in ("site-packages", "dist-packages") and directly_under:
            return path
    return Path(sysconfig.get_path("purelib", "posix_prefix", vars={"base": str(prefix)}))


if __name__ == "__main__":
    print(python_dir(Path(sys.argv[1])))
