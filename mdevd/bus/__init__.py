# SPDX-License-Identifier: LGPL-2.1-or-later
"""D-Bus glue: names, object paths, error translation, caller identity and authorization.

Nothing here decides anything about devices; the interface modules translate between the bus
and the engine, and every name the contract fixes lives in `names`. Where each part is:

- `connection`: the daemon's bus connection (dbus-fast's MessageBus, paced, ObjectManager
  signals from the root path);
- `tree`: the engine's listener that exports, updates and removes one object per manager,
  parent and device;
- `deferred`: the devices that exist at start-up, served at once but exported to dbus-fast
  on their first use (its per-object export was most of the start-up time);
- `exported`: the base of every interface, which authorizes each method from `auth`'s table
  and translates its errors (`errors`) before and around the method's work;
- `context`: what the interfaces' handlers get to serve a call;
- `manager`, `parent`, `device`: one module per interface; `reads`: the large reads.
"""
