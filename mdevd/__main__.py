# SPDX-License-Identifier: LGPL-2.1-or-later
"""`python -m mdevd`: the same as the `mdevd` program."""

import sys

from mdevd.main import main

sys.exit(main())
