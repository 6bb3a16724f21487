# SPDX-License-Identifier: LGPL-2.1-or-later
"""D-Bus glue: names, object paths, error translation, caller identity and authorization.

Nothing here decides anything about devices; the interface modules translate between the bus
and the engine, and every name the contract fixes lives in `names`.
"""
