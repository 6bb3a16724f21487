# SPDX-License-Identifier: LGPL-2.1-or-later
"""Callout scripts written for the tests, each a small Python program.

- `recorder`: logs every call (script name, argv, stdin, parent PID) as a JSON line and answers
  according to files beside its log (veto on `pre`, attributes for `get attributes`).
- `ap_check`: speaks s390-tools' ap-check protocol for vfio-ap: the lock file recording the
  caller's PID (`getppid()`), held from `pre` to `post` and not re-entrant, APQN conflict checks
  against the autostart definitions in mdevctl's directory (which it reads itself) and against
  running devices' `matrix`, and `get attributes` rebuilt from sysfs. Paths are baked in, so
  the tests relocate the lock, mdevctl's directory and sysfs.
- `versioned`: a callout protocol version 2 script (answers `get capabilities`) that applies
  live changes itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

_RECORDER = r"""#!{python}
import json, os, sys
log = {log!r}
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
data = sys.stdin.read()
with open(log, "a") as f:
    f.write(json.dumps({{"script": os.path.basename(sys.argv[0]), "argv": sys.argv[1:],
                        "stdin": data, "ppid": os.getppid()}}) + "\n")
base = os.path.dirname(log)
if {claims!r} and args["-t"] not in {claims!r}:
    sys.exit(2)
if args["-e"] == "get" and args["-a"] == "attributes":
    answer = os.path.join(base, "attributes")
    if os.path.exists(answer):
        sys.stdout.write(open(answer).read())
    sys.exit(0)
if args["-e"] == "get":
    sys.exit(0)
if args["-e"] == "pre" and os.path.exists(os.path.join(base, "veto")):
    sys.stderr.write("vetoed by the test\n")
    sys.exit(int(open(os.path.join(base, "veto")).read() or 1))
sys.stderr.write("hello from callout\n")
"""


def recorder(log: Path, claims: tuple[str, ...] = ()) -> str:
    """A recording callout; with `claims`, it answers 2 ("not mine") for other types."""
    return _RECORDER.format(python=sys.executable, log=str(log), claims=list(claims))


_AP_CHECK = r"""#!{python}
# The ap-check protocol (s390-tools zconf/zcrypt ap-check), re-told for the tests.
import errno, json, os, re, sys, time
LOCK, CONFIG, SYSFS, LOG = {lock!r}, {config!r}, {sysfs!r}, {log!r}
UUID_RE = re.compile(
    r"[0-9a-fA-F]{{8}}-[0-9a-fA-F]{{4}}-[0-9a-fA-F]{{4}}-[0-9a-fA-F]{{4}}-[0-9a-fA-F]{{12}}"
)
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
event, action, uuid = args["-e"], args["-a"], args["-u"]

def record(**what):
    with open(LOG, "a") as f:
        f.write(json.dumps({{"event": event, "action": action, "uuid": uuid,
                            "ppid": os.getppid(), **what}}) + "\n")

def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True

def lock():
    # libap's util_lockfile_parent_lock: link a temporary file holding the caller's PID.
    temp = f"{{LOCK}}{{os.getpid():05d}}"
    with open(temp, "w") as f:
        f.write(f"{{os.getppid()}}\n")
    try:
        for attempt in range(20):
            try:
                os.link(temp, LOCK)
                record(locked=open(LOCK).read().strip())
                if os.path.exists(LOG + ".slow"):
                    time.sleep(0.5)  # hold the lock a while: a concurrent caller would collide
                return True
            except FileExistsError:
                try:
                    owner = int(open(LOCK).read() or 0)
                except (OSError, ValueError):
                    continue
                if owner and not alive(owner):
                    os.unlink(LOCK)
                    continue
                record(contention=owner)
                time.sleep(0.1)
        return False
    finally:
        os.unlink(temp)

def release():
    try:
        if int(open(LOCK).read()) == os.getppid():
            os.unlink(LOCK)
    except (OSError, ValueError):
        pass

def apqns(config):
    adapters, domains = set(), set()
    for attr in config.get("attrs") or []:
        for name, value in attr.items():
            if name == "assign_adapter":
                adapters.add(int(value, 0))
            elif name == "assign_domain":
                domains.add(int(value, 0))
    return {{(a, d) for a in adapters for d in domains}}

def running_matrix(device):
    path = os.path.join(SYSFS, "devices/vfio_ap/matrix", device, "matrix")
    found = set()
    for line in open(path).read().split():
        a, _, d = line.partition(".")
        found.add((int(a, 16) if a else None, int(d, 16) if d else None))
    return found

def fail(message):
    sys.stderr.write(message + "\n")
    release()
    sys.exit(1)

if args["-t"] != "vfio_ap-passthrough":
    sys.exit(2)
if args["-p"] != "matrix":
    sys.stderr.write("Invalid parent specified\n")
    sys.exit(1)
own_config = os.path.join(CONFIG, "matrix", uuid)
record()
if event == "pre" and action in ("define", "modify"):
    if action == "define" and os.path.exists(own_config):
        fail("Config already exists")
    if action == "modify" and not os.path.exists(own_config):
        fail("Config doesn't exist")
    if not lock():
        sys.stderr.write("Failed to acquire configuration lock\n")
        sys.exit(1)
    config = json.load(sys.stdin)
    configs = os.path.join(CONFIG, "matrix")
    if config.get("start") == "auto" and os.path.isdir(configs):
        for name in sorted(os.listdir(configs)):
            if not UUID_RE.fullmatch(name) or name.lower() == uuid:
                continue
            other = json.load(open(os.path.join(CONFIG, "matrix", name)))
            if other.get("start") != "auto":
                continue
            for a, d in sorted(apqns(config) & apqns(other)):
                fail(f"APQN {{a}}.{{d}} is defined for autostart by {{name}}")
elif event == "pre" and action == "start":
    if not lock():
        sys.stderr.write("Failed to acquire configuration lock\n")
        sys.exit(1)
    config = json.load(sys.stdin)
    devices = os.path.join(SYSFS, "devices/vfio_ap/matrix")
    for name in sorted(os.listdir(devices)):
        if UUID_RE.fullmatch(name) and name != uuid:
            for a, d in sorted(apqns(config) & running_matrix(name)):
                fail(f"APQN {{a}}.{{d}} already in use by {{name}}")
elif event == "pre" and action in ("stop", "undefine"):
    if not lock():
        sys.stderr.write("Failed to acquire configuration lock\n")
        sys.exit(1)
elif event == "post":
    release()
elif event == "get" and action == "attributes":
    if not lock():
        sys.exit(1)
    pairs = sorted(p for p in running_matrix(uuid))
    adapters = sorted({{a for a, _ in pairs if a is not None}})
    domains = sorted({{d for _, d in pairs if d is not None}})
    items = [f'"assign_adapter": "{{a}}"' for a in adapters]
    items += [f'"assign_domain": "{{d}}"' for d in domains]
    print("[{{" + "}},{{".join(items) + "}}]")
    release()
"""


def ap_check(lock: Path, config_dir: Path, sysfs: Path, log: Path) -> str:
    return _AP_CHECK.format(
        python=sys.executable, lock=str(lock), config=str(config_dir), sysfs=str(sysfs),
        log=str(log),
    )  # fmt: skip


_VERSIONED = r"""#!{python}
import json, os, sys
log = {log!r}
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
data = sys.stdin.read()
with open(log, "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "stdin": data}}) + "\n")
if args["-t"] != {type_id!r}:
    sys.exit(2)
if args["-e"] == "get" and args["-a"] == "capabilities":
    supports = {{"version": 2, "actions": {actions!r}, "events": {events!r}}}
    print(json.dumps({{"supports": supports}}))
"""


def versioned(log: Path, type_id: str, *, live: bool = True) -> str:
    events = ["pre", "post", "notify", "get", "live"] if live else ["pre", "post", "notify", "get"]
    actions = ["start", "stop", "define", "undefine", "modify", "attributes", "capabilities"]
    return _VERSIONED.format(
        python=sys.executable, log=str(log), type_id=type_id, actions=actions, events=events
    )


# ---- stand-ins for mdevctl's own test callouts (testdata/callouts/*.sh, not vendored) -------

#: The UUID mdevctl's versioned test scripts claim, and the one they support live changes for.
UUID_VERSIONED = "11111111-1111-0000-0000-000000000000"
UUID_LIVE = "11111111-1111-1111-0000-000000000000"

_GOLDEN = r"""#!{python}
# {name}: what mdevctl's testdata/callouts/{name}.sh does, as its tests show.
import json, os, sys
NAME, STATE = {name!r}, {state!r}
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
event, action, uuid = args["-e"], args["-a"], args["-u"]
stdin = sys.stdin.read()
versioned = NAME.startswith(("ver-", "live-", "modify-active"))
if NAME.startswith("ver-") and uuid != {versioned_uuid!r}:
    sys.exit(2)
if event == "get" and action == "capabilities":
    if versioned:
        events = ["pre", "post", "notify", "get"]
        if uuid == {live_uuid!r}:
            events.append("live")
        actions = ["start", "stop", "define", "undefine", "modify", "attributes", "capabilities"]
        print(json.dumps({{"supports": {{"version": 2, "actions": actions, "events": events}}}}))
    sys.exit(0)
if NAME == "rc1" or (NAME == "ver-rc1" and event != "get"):
    sys.exit(1)
if event == "live":
    if NAME == "live-rc1":
        sys.exit(1)
    with open(os.path.join(STATE, uuid), "w") as f:
        f.write(json.dumps(json.loads(stdin)["attrs"]))
if event == "get" and action == "attributes":
    if NAME == "good-json":
        print('[{{"attribute0": "VALUE"}}]')
    elif NAME == "bad-json":
        print('[{{"attribute0": "VALUE"')
    elif NAME == "modify-active":
        path = os.path.join(STATE, uuid)
        print(open(path).read() if os.path.exists(path) else "[]")
"""


def golden(name: str, state: Path) -> str:
    """rc0, rc1, good-json, bad-json, ver-rc0, ver-rc1, live-rc0, live-rc1, modify-active."""
    return _GOLDEN.format(
        python=sys.executable, name=name, state=str(state), versioned_uuid=UUID_VERSIONED,
        live_uuid=UUID_LIVE,
    )  # fmt: skip
