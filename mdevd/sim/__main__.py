# SPDX-License-Identifier: LGPL-2.1-or-later
"""`python -m mdevd.sim` runs the same command as the `mdevd-sim` entry point."""

from mdevd.sim.cli import main

raise SystemExit(main())
