# SPDX-License-Identifier: LGPL-2.1-or-later
"""A real polkitd for tests, with the project's actions and rules, never touching the host.

    with extra_accounts([Account("mdevd-tester", groups=("mdevd",))]) as accounts:
        with private_bus([PROJECT_POLICY, POLKIT_POLICY]) as address:
            with running_polkitd(address) as polkitd:      # the project's .policy and rules
                ...
                polkitd.pause()     # on the bus, but answers nothing (SIGSTOP)
                polkitd.resume()
                polkitd.stop()      # gone from the bus

`running_polkitd` runs Debian's `/usr/lib/polkit-1/polkitd` inside its own mount namespace
(`unshare --mount`), where bind mounts replace its actions directory with the project's
`dbus/*.policy`, its admin rules directory with `config/polkit/*.rules`, and a tmpfs hides the
vendor rules (Debian's 50-default.rules), so decisions depend on the project's files alone.

polkitd resolves users and groups through NSS (`subject.isInGroup`), and dbus-daemon refuses
connections of uids it cannot look up. `extra_accounts` therefore bind-mounts copies of
/etc/passwd and /etc/group with extra accounts over the originals, in the test process's mount
namespace (the suite's conftest made it private), so the bus, polkitd and the daemon started
inside the block all see them and the host never does. Start the bus inside the block.

`AuthenticationAgent` is a polkit authentication agent (the role a desktop's password dialog
plays), registered with the real polkitd for one process: it answers every request by
dismissing the dialog, by reporting the administrator as authenticated (as the setuid helper
does after a correct password), or by failing. `tty_agent` runs polkit's own pkttyagent
instead, with PAM accepting or refusing, to show the two give the same answers.
"""

# No `from __future__ import annotations`: dbus-fast reads the agent's `-> None` as a signature
# only when it is the real None, not the string "None".

import asyncio
import fcntl
import os
import pty
import shutil
import signal
import subprocess
import tempfile
import termios
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from dbus_fast import DBusError, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface

from mdevd.bus.signatures import DBusSignature, DBusStr, dbus_method
from tests.support.daemon import name_has_owner
from tests.support.paths import REPO

POLKITD = Path("/usr/lib/polkit-1/polkitd")
POLKIT_BUS_NAME = "org.freedesktop.PolicyKit1"
POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"
POLKIT_INTERFACE = "org.freedesktop.PolicyKit1.Authority"

#: The project's polkit actions, as installed to /usr/share/polkit-1/actions/.
PROJECT_ACTIONS = REPO / "dbus" / "org.mdevd.Mdevd1.policy"
#: The example rules file, as an admin installs it to /etc/polkit-1/rules.d/.
EXAMPLE_RULES = REPO / "config" / "polkit" / "50-mdevd.rules"

# Runs as root inside `unshare --mount --propagation private`; $1 actions, $2 rules.
_POLKITD_SETUP = """
mount --bind "$1" /usr/share/polkit-1/actions
mount --bind "$2" /etc/polkit-1/rules.d
mount -t tmpfs -o mode=0755 mdevd-test-no-vendor-rules /usr/share/polkit-1/rules.d
exec "$3" --no-debug
"""

#: Where test accounts' ids start; the first free ids from here are used.
FIRST_TEST_ID = 61000


# ---- accounts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    """A test user with a primary group of the same name and supplementary `groups`."""

    name: str
    groups: tuple[str, ...] = ()


@dataclass
class Accounts:
    uids: dict[str, int] = field(default_factory=dict)
    gids: dict[str, int] = field(default_factory=dict)

    def uid(self, name: str) -> int:
        return self.uids[name]

    def gid(self, name: str) -> int:
        return self.gids[name]


def _in_private_mount_namespace() -> bool:
    """True when this process's mount namespace is not its parent's (the suite unshared it).

    PID 1's namespace would be the better reference, but sandboxes often hide /proc/1/ns.
    """
    try:
        return os.stat("/proc/self/ns/mnt").st_ino != os.stat(f"/proc/{os.getppid()}/ns/mnt").st_ino
    except OSError:
        return False


def _ids_in(path: Path) -> set[int]:
    ids = set()
    for line in path.read_text().splitlines():
        fields = line.split(":")
        if len(fields) > 2 and fields[2].isdigit():
            ids.add(int(fields[2]))
    return ids


def _names_in(path: Path) -> set[str]:
    return {line.split(":", 1)[0] for line in path.read_text().splitlines() if line}


@contextmanager
def extra_accounts(accounts: Sequence[Account]) -> Iterator[Accounts]:
    """Make `accounts` exist for processes started inside the block; yield their ids."""
    if not _in_private_mount_namespace():
        raise RuntimeError("extra_accounts mounts over /etc: run it in a private mount namespace")
    passwd, group = Path("/etc/passwd"), Path("/etc/group")
    taken_uids, taken_gids = _ids_in(passwd), _ids_in(group)
    known_users, known_groups = _names_in(passwd), _names_in(group)
    result = Accounts()
    next_id = FIRST_TEST_ID

    def free_id() -> int:
        nonlocal next_id
        while next_id in taken_uids or next_id in taken_gids:
            next_id += 1
        taken_uids.add(next_id)
        taken_gids.add(next_id)
        return next_id

    passwd_lines: list[str] = []
    group_members: dict[str, list[str]] = {}
    for account in accounts:
        if account.name in known_users:
            raise RuntimeError(f"test account {account.name} exists on this host")
        uid = free_id()
        result.uids[account.name] = uid
        result.gids[account.name] = uid
        passwd_lines.append(f"{account.name}:x:{uid}:{uid}:mdevd test:/nonexistent:/bin/false")
        group_members[account.name] = []
        for extra in account.groups:
            group_members.setdefault(extra, []).append(account.name)
    group_lines = []
    for name, members in group_members.items():
        if name in known_groups:
            raise RuntimeError(f"test group {name} exists on this host")
        gid = result.gids.get(name) or free_id()
        result.gids[name] = gid
        group_lines.append(f"{name}:x:{gid}:{','.join(members)}")

    directory = Path(tempfile.mkdtemp(prefix="mdevd-accounts-", dir="/tmp"))
    mounted: list[Path] = []
    try:
        directory.chmod(0o755)
        for original, extra_lines in ((passwd, passwd_lines), (group, group_lines)):
            copy = directory / original.name
            text = original.read_text()
            copy.write_text(text + ("" if text.endswith("\n") else "\n") + "\n".join(extra_lines))
            copy.chmod(0o644)
            subprocess.run(["mount", "--bind", str(copy), str(original)], check=True)
            mounted.append(original)
        yield result
    finally:
        for original in reversed(mounted):
            subprocess.run(["umount", str(original)], check=False)
        shutil.rmtree(directory, ignore_errors=True)


# ---- polkitd -------------------------------------------------------------------------------


@dataclass
class RunningPolkit:
    process: subprocess.Popen[bytes]
    address: str
    actions_dir: Path
    rules_dir: Path
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def pause(self) -> None:
        """Keep polkitd on the bus but let it answer nothing."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 10) -> None:
        """Stop polkitd and wait until its name has left the bus."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        deadline = time.monotonic() + timeout
        while name_has_owner(self.address, POLKIT_BUS_NAME):
            if time.monotonic() > deadline:
                raise AssertionError("polkitd's name stayed on the bus after it exited")
            time.sleep(0.02)


@contextmanager
def running_polkitd(
    address: str,
    actions: Sequence[Path] = (PROJECT_ACTIONS,),
    rules: Sequence[Path] = (EXAMPLE_RULES,),
    *,
    start_timeout: float = 15,
) -> Iterator[RunningPolkit]:
    """Run polkitd on the bus at `address` with only `actions` and `rules` installed.

    The bus must let polkitd own its name: include POLKIT_POLICY (tests.support.bus).
    """
    if not POLKITD.exists():
        raise RuntimeError(f"{POLKITD} is missing: install the Debian package polkitd")
    workdir = Path(tempfile.mkdtemp(prefix="mdevd-polkitd-", dir="/tmp"))
    # polkitd drops to its own user: everything it reads must be world-readable.
    workdir.chmod(0o755)
    actions_dir, rules_dir = workdir / "actions", workdir / "rules.d"
    for directory, files in ((actions_dir, actions), (rules_dir, rules)):
        directory.mkdir()
        directory.chmod(0o755)
        for source in files:
            target = directory / Path(source).name
            shutil.copyfile(source, target)
            target.chmod(0o644)
    log_path = workdir / "polkitd.log"
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=address)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-ec",
                _POLKITD_SETUP,
                "polkitd-setup",
                str(actions_dir),
                str(rules_dir),
                str(POLKITD),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    polkit = RunningPolkit(process, address, actions_dir, rules_dir, log_path)
    try:
        deadline = time.monotonic() + start_timeout
        while not name_has_owner(address, POLKIT_BUS_NAME):
            if process.poll() is not None:
                raise AssertionError(f"polkitd exited with {process.returncode}:\n{polkit.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"polkitd not on the bus in {start_timeout} s:\n{polkit.log()}"
                )
            time.sleep(0.02)
        yield polkit
    finally:
        polkit.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# ---- an authentication agent ----------------------------------------------------------------

AGENT_INTERFACE = "org.freedesktop.PolicyKit1.AuthenticationAgent"
AGENT_PATH = "/org/mdevd/Test/AuthenticationAgent"
#: What an agent answers when the user closes the dialog; polkitd reports it as dismissed.
_CANCELLED = "org.freedesktop.PolicyKit1.Error.Cancelled"

DBusStrDict = Annotated[dict[str, str], DBusSignature("a{ss}")]
DBusIdentities = Annotated[list[tuple[str, dict[str, Variant]]], DBusSignature("a(sa{sv})")]


@dataclass(frozen=True)
class AuthenticationRequest:
    action_id: str
    message: str
    cookie: str


class _AgentInterface(ServiceInterface):
    def __init__(self, agent: "AuthenticationAgent") -> None:
        super().__init__(AGENT_INTERFACE)
        self._agent = agent

    @dbus_method()
    async def BeginAuthentication(
        self,
        action_id: DBusStr,
        message: DBusStr,
        icon_name: DBusStr,
        details: DBusStrDict,
        cookie: DBusStr,
        identities: DBusIdentities,
    ) -> None:
        await self._agent._begin(AuthenticationRequest(action_id, message, cookie))

    @dbus_method()
    def CancelAuthentication(self, cookie: DBusStr) -> None:
        self._agent.cancelled.append(cookie)
        waiter = self._agent._waiting.pop(cookie, None)
        if waiter is not None and not waiter.done():
            waiter.set_exception(
                DBusError("org.freedesktop.PolicyKit1.Error.Cancelled", "cancelled")
            )


AgentAnswer = Literal["dismiss", "authenticate", "fail", "hold"]


class AuthenticationAgent:
    """A polkit authentication agent for one process, answering every request with `answer`.

    `dismiss`: the user closed the dialog (the agent answers polkit's `Cancelled` error, as
    desktop agents do). `authenticate`: the administrator (uid 0) typed the right password (the
    agent reports it, as polkit's setuid helper does). `fail`: authentication failed (the
    dialog ends without a report). `hold`: the dialog stays open until `release()` answers it
    or polkitd cancels it (`cancelled` then lists its cookie). `tests/security` shows that
    `authenticate` and `fail` come out as with polkit's own pkttyagent (`tty_agent`).
    """

    def __init__(self, bus: MessageBus, answer: AgentAnswer) -> None:
        self.bus = bus
        self.answer = answer
        self.requests: list[AuthenticationRequest] = []
        self.cancelled: list[str] = []
        self._waiting: dict[str, asyncio.Future[AgentAnswer]] = {}

    def release(self, answer: AgentAnswer) -> None:
        """Answer every held dialog with `answer` ("dismiss", "authenticate" or "fail")."""
        waiting, self._waiting = self._waiting, {}
        for waiter in waiting.values():
            if not waiter.done():
                waiter.set_result(answer)

    async def _begin(self, request: AuthenticationRequest) -> None:
        self.requests.append(request)
        answer = self.answer
        if answer == "hold":
            waiter: asyncio.Future[AgentAnswer] = asyncio.get_running_loop().create_future()
            self._waiting[request.cookie] = waiter
            answer = await waiter
        if answer == "dismiss":
            raise DBusError(_CANCELLED, "dismissed by the test")
        if answer == "fail":
            return
        reply = await self.bus.call(
            Message(
                destination=POLKIT_BUS_NAME,
                path=POLKIT_PATH,
                interface=POLKIT_INTERFACE,
                member="AuthenticationAgentResponse2",
                signature="us(sa{sv})",
                body=[0, request.cookie, ["unix-user", {"uid": Variant("u", 0)}]],
            )
        )
        if reply.message_type is MessageType.ERROR:
            raise DBusError("org.freedesktop.PolicyKit1.Error.Failed", str(reply.body))

    @classmethod
    @asynccontextmanager
    async def registered(
        cls, address: str, pid: int, answer: AgentAnswer
    ) -> AsyncIterator["AuthenticationAgent"]:
        """Register an agent for the process `pid` (polkitd lets root do so for anyone)."""
        bus = await MessageBus(bus_address=address).connect()
        agent = cls(bus, answer)
        bus.export(AGENT_PATH, _AgentInterface(agent))
        subject = ["unix-process", _process_details(pid)]
        try:
            reply = await bus.call(
                Message(
                    destination=POLKIT_BUS_NAME,
                    path=POLKIT_PATH,
                    interface=POLKIT_INTERFACE,
                    member="RegisterAuthenticationAgent",
                    signature="(sa{sv})ss",
                    body=[subject, "C", AGENT_PATH],
                )
            )
            if reply.message_type is MessageType.ERROR:
                raise AssertionError(f"registering the agent failed: {reply.body}")
            yield agent
        finally:
            bus.disconnect()


def _process_details(pid: int) -> dict[str, Variant]:
    """polkit's unix-process subject: pid, start time (clock ticks since boot) and uid."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Field 22 (starttime); the fields after the parenthesised command name start at field 3.
    start_time = int(stat.rsplit(")", 1)[1].split()[19])
    uid = os.stat(f"/proc/{pid}").st_uid
    return {
        "pid": Variant("u", pid),
        "start-time": Variant("t", start_time),
        "uid": Variant("i", uid),
    }


# ---- polkit's own text agent ---------------------------------------------------------------

PKTTYAGENT = "pkttyagent"
_PAM_DIR = Path("/etc/pam.d")
_SYSTEM_BUS_DIR = Path("/run/dbus")


@contextmanager
def tty_agent(address: str, pid: int, pam_auth: str) -> Iterator[subprocess.Popen[bytes]]:
    """polkit's pkttyagent on a pseudo-terminal, registered for the process `pid`.

    Its setuid helper (polkit-agent-helper-1) authenticates through PAM service `polkit-1`,
    here configured as `auth required <pam_auth>` (`pam_permit.so`: the right password;
    `pam_deny.so`: a wrong one), and reports to polkitd on the default system bus socket, since
    a setuid program ignores DBUS_SYSTEM_BUS_ADDRESS. Both are replaced for the length of the
    block, by mounts in this process's (private) mount namespace.
    """
    if not _in_private_mount_namespace():
        raise RuntimeError("tty_agent mounts over /etc/pam.d: run it in a private mount namespace")
    socket_path = address.removeprefix("unix:path=").split(",", 1)[0]
    directory = Path(tempfile.mkdtemp(prefix="mdevd-pam-", dir="/tmp"))
    pam_dir = directory / "pam.d"
    shutil.copytree(_PAM_DIR, pam_dir, symlinks=True)
    (pam_dir / "polkit-1").write_text(f"auth required {pam_auth}\naccount required pam_permit.so\n")
    mounted: list[Path] = []
    master, slave = pty.openpty()
    agent: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(["mount", "--bind", str(pam_dir), str(_PAM_DIR)], check=True)
        mounted.append(_PAM_DIR)
        subprocess.run(["mount", "-t", "tmpfs", "mdevd-test-bus", str(_SYSTEM_BUS_DIR)], check=True)
        mounted.append(_SYSTEM_BUS_DIR)
        (_SYSTEM_BUS_DIR / "system_bus_socket").symlink_to(socket_path)
        registered, notify = os.pipe()
        agent = subprocess.Popen(
            [PKTTYAGENT, "--process", str(pid), "--notify-fd", str(notify)],
            env=dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=address),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            pass_fds=(notify,),
            start_new_session=True,
            # The text agent reads from its controlling terminal: make the pty that.
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        os.close(notify)
        # The agent closes the notify fd once polkitd has registered it.
        os.read(registered, 1)
        os.close(registered)
        if agent.poll() is not None:
            raise AssertionError(f"pkttyagent exited with {agent.returncode}")
        yield agent
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait()
        os.close(master)
        os.close(slave)
        for target in reversed(mounted):
            subprocess.run(["umount", str(target)], check=False)
        shutil.rmtree(directory, ignore_errors=True)
