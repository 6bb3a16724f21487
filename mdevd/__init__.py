# SPDX-License-Identifier: LGPL-2.1-or-later
"""mdevd: persistent mediated-device definitions, a D-Bus API, and the kernel glue between."""

# The project's one version number: pyproject.toml reads it (tool.setuptools.dynamic);
# debian/changelog, mdevd.spec and NEWS.md repeat it, and tests/packaging/test_version.py
# checks they agree.
__version__ = "0.1.0"
