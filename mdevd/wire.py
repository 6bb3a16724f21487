# SPDX-License-Identifier: LGPL-2.1-or-later
"""A blocking D-Bus connection for the command-line programs: method calls, nothing else.

`mdevdctl list` and the mdevctl front end make one or two calls and exit, and libvirt starts
the front end once per node-device operation. Importing dbus-fast imports asyncio, and both
together cost more than the whole of `mdevctl list` on a slow machine (docs/performance.md).
This module speaks the protocol with the standard library only: a Unix socket, the EXTERNAL
authentication, `Hello`, then calls whose replies it waits for, skipping the signals the bus
sends meanwhile (`NameAcquired`). The daemon keeps dbus-fast; this is only a client.

Values are those dbus-fast gives and takes, so the same parsing serves both: structs are
lists, `a{..}` dicts, `ay` bytes, and a variant is a `Variant` with `signature` and `value`.
Only little-endian messages are written; replies in either byte order are read. Every length
that comes from the peer is checked against the message it is in, so a broken or hostile
peer gives `WireError`, never a hang or an unbounded read.

File descriptors (`h`, for `Device.Open`): the connection negotiates Unix fd passing
(`NEGOTIATE_UNIX_FD`) and receives fds as SCM_RIGHTS ancillary data (close-on-exec). In the
codec an `h` is what the wire holds, an index into its message's fds; a reply's are replaced
by the fds themselves (`with_fds`), which become the caller's. A message keeps at most the
number of fds its `UNIX_FDS` header field says; any others, and those of messages that are not
the awaited reply, are closed at once, so a peer cannot make a client keep descriptors.
"""

from __future__ import annotations

import array
import os
import socket
import struct

from mdevd.record import Record

# Annotations only: importing typing and urllib.parse would cost every command-line start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any, Final

#: The system bus when `DBUS_SYSTEM_BUS_ADDRESS` is not set (the D-Bus specification's).
SYSTEM_BUS_ADDRESS: Final = "unix:path=/var/run/dbus/system_bus_socket"
#: The specification's limit on one message.
MAX_MESSAGE: Final = 128 * 1024 * 1024
#: Nesting the specification allows (32 arrays and 32 structs); deeper input is refused.
MAX_DEPTH: Final = 64
#: fds one message may carry (Linux's SCM_MAX_FD, the most one sendmsg passes); also the most
#: this connection keeps waiting for the messages they arrived with.
MAX_UNIX_FDS: Final = 253

METHOD_CALL: Final = 1
METHOD_RETURN: Final = 2
ERROR: Final = 3
SIGNAL: Final = 4

#: Header field codes (the specification's).
PATH, INTERFACE, MEMBER, ERROR_NAME, REPLY_SERIAL, DESTINATION, SENDER, SIGNATURE, UNIX_FDS = range(
    1, 10
)
_HEADER_FIELD_TYPES: Final = {
    PATH: "o",
    INTERFACE: "s",
    MEMBER: "s",
    ERROR_NAME: "s",
    REPLY_SERIAL: "u",
    DESTINATION: "s",
    SENDER: "s",
    SIGNATURE: "g",
    UNIX_FDS: "u",
}

_FIXED: Final = {
    "y": ("B", 1),
    "b": ("I", 4),
    "n": ("h", 2),
    "q": ("H", 2),
    "i": ("i", 4),
    "u": ("I", 4),
    "x": ("q", 8),
    "t": ("Q", 8),
    "d": ("d", 8),
    "h": ("I", 4),
}
_ALIGNMENT: Final = {**{code: size for code, (_fmt, size) in _FIXED.items()},
                     "s": 4, "o": 4, "g": 1, "v": 1, "a": 4, "(": 8, "{": 8}  # fmt: skip


class WireError(Exception):
    """The connection failed, or the peer sent what the protocol does not allow."""


class CallError(Exception):
    """The peer answered a call with an error: its D-Bus name and message."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


class Variant(Record):
    _fields = ("signature", "value")
    __slots__ = _fields
    signature: str
    value: Any

    def __init__(self, signature: str, value: Any) -> None:
        self._init(signature, value)


# ---- signatures ------------------------------------------------------------------------------


def _type_end(signature: str, start: int, depth: int = 0) -> int:
    """The index just past the single complete type that starts at `start`."""
    if depth > MAX_DEPTH:
        raise WireError(f"signature nested too deeply: {signature!r}")
    if start >= len(signature):
        raise WireError(f"incomplete signature {signature!r}")
    code = signature[start]
    if code in _FIXED or code in "sogv":
        return start + 1
    if code == "a":
        return _type_end(signature, start + 1, depth + 1)
    if code == "(":
        i = start + 1
        while i < len(signature) and signature[i] != ")":
            i = _type_end(signature, i, depth + 1)
        if i >= len(signature) or i == start + 1:
            raise WireError(f"bad struct in signature {signature!r}")
        return i + 1
    if code == "{":
        key_end = _type_end(signature, start + 1, depth + 1)
        value_end = _type_end(signature, key_end, depth + 1)
        if value_end >= len(signature) or signature[value_end] != "}":
            raise WireError(f"bad dict entry in signature {signature!r}")
        return value_end + 1
    raise WireError(f"unknown type code {code!r} in signature {signature!r}")


def split_signature(signature: str) -> list[str]:
    """The complete types of a signature, in order (`"sa{sv}"` -> `["s", "a{sv}"]`)."""
    types: list[str] = []
    i = 0
    while i < len(signature):
        end = _type_end(signature, i)
        types.append(signature[i:end])
        i = end
    return types


# ---- writing ---------------------------------------------------------------------------------


class _Writer:
    def __init__(self) -> None:
        self.buffer = bytearray()

    def align(self, boundary: int) -> None:
        self.buffer.extend(b"\0" * (-len(self.buffer) % boundary))

    def write(self, signature: str, value: Any) -> None:
        code = signature[0]
        if code in _FIXED:
            fmt, size = _FIXED[code]
            self.align(size)
            self.buffer.extend(struct.pack("<" + fmt, bool(value) if code == "b" else value))
        elif code in "so":
            data = str(value).encode()
            self.align(4)
            self.buffer.extend(struct.pack("<I", len(data)) + data + b"\0")
        elif code == "g":
            data = str(value).encode()
            self.buffer.extend(bytes([len(data)]) + data + b"\0")
        elif code == "v":
            if not isinstance(value, Variant) and not hasattr(value, "signature"):
                raise WireError(f"a variant needs a signature: {value!r}")
            self.write("g", value.signature)
            self.write(value.signature, value.value)
        elif code == "a":
            element = signature[1:]
            self.align(4)
            at = len(self.buffer)
            self.buffer.extend(b"\0\0\0\0")
            self.align(_ALIGNMENT[element[0]])
            start = len(self.buffer)
            if element[0] == "{":
                key, item = split_signature(element[1:-1])
                for k, v in value.items():
                    self.align(8)
                    self.write(key, k)
                    self.write(item, v)
            elif element == "y":
                self.buffer.extend(bytes(value))
            else:
                for item in value:
                    self.write(element, item)
            struct.pack_into("<I", self.buffer, at, len(self.buffer) - start)
        elif code == "(":
            self.align(8)
            members = split_signature(signature[1:-1])
            if len(members) != len(value):
                raise WireError(f"struct {signature} needs {len(members)} members: {value!r}")
            for member, item in zip(members, value, strict=True):
                self.write(member, item)
        else:
            raise WireError(f"cannot write type {signature!r}")


def marshal(signature: str, values: Sequence[Any]) -> bytes:
    """The body of a message with `signature` holding `values` (little-endian)."""
    types = split_signature(signature)
    if len(types) != len(values):
        raise WireError(f"signature {signature!r} needs {len(types)} values, got {len(values)}")
    writer = _Writer()
    for type_, value in zip(types, values, strict=True):
        writer.write(type_, value)
    return bytes(writer.buffer)


# ---- reading ---------------------------------------------------------------------------------


class _Reader:
    def __init__(self, data: bytes, little: bool, offset: int = 0) -> None:
        self.data = data
        self.order = "<" if little else ">"
        self.pos = offset
        #: Alignment is relative to the start of the message; the body starts 8-aligned.
        self.base = offset

    def align(self, boundary: int) -> None:
        self.pos += -(self.pos - self.base) % boundary
        if self.pos > len(self.data):
            raise WireError("message truncated")

    def take(self, count: int) -> bytes:
        end = self.pos + count
        if count < 0 or end > len(self.data):
            raise WireError("message truncated")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def read(self, signature: str, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise WireError("value nested too deeply")
        code = signature[0]
        if code in _FIXED:
            fmt, size = _FIXED[code]
            self.align(size)
            (value,) = struct.unpack(self.order + fmt, self.take(size))
            return bool(value) if code == "b" else value
        if code in "so":
            self.align(4)
            (length,) = struct.unpack(self.order + "I", self.take(4))
            return self._text(length)
        if code == "g":
            return self._text(self.take(1)[0])
        if code == "v":
            inner = self.read("g", depth)
            if len(split_signature(inner)) != 1:
                raise WireError(f"variant signature {inner!r} is not one complete type")
            return Variant(inner, self.read(inner, depth + 1))
        if code == "a":
            element = signature[1:]
            self.align(4)
            (length,) = struct.unpack(self.order + "I", self.take(4))
            if length > 64 * 1024 * 1024:
                raise WireError("array longer than the specification allows")
            self.align(_ALIGNMENT[element[0]])
            end = self.pos + length
            if end > len(self.data):
                raise WireError("message truncated")
            if element == "y":
                return self.take(length)
            if element[0] == "{":
                key, item = split_signature(element[1:-1])
                entries: dict[Any, Any] = {}
                while self.pos < end:
                    self.align(8)
                    k = self.read(key, depth + 1)
                    entries[k] = self.read(item, depth + 1)
                self._at(end)
                return entries
            items: list[Any] = []
            while self.pos < end:
                items.append(self.read(element, depth + 1))
            self._at(end)
            return items
        if code == "(":
            self.align(8)
            return [self.read(member, depth + 1) for member in split_signature(signature[1:-1])]
        raise WireError(f"cannot read type {signature!r}")

    def _text(self, length: int) -> str:
        raw = self.take(length + 1)
        if raw[-1] != 0:
            raise WireError("string not terminated")
        try:
            return raw[:-1].decode()
        except UnicodeDecodeError as e:
            raise WireError("string is not UTF-8") from e

    def _at(self, end: int) -> None:
        if self.pos != end:
            raise WireError("array elements overrun the array's length")


def with_fds(
    signature: str, values: Sequence[Any], fds: Sequence[int]
) -> tuple[list[Any], set[int]]:
    """`values` of a message with `signature` whose `h` indexes are replaced by the fds they
    index in `fds` (the message's), and the indexes used. An index out of range is
    `WireError`. Works on dbus-fast's values too (its Variant has the same fields)."""
    used: set[int] = set()

    def swap(code: str, value: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise WireError("value nested too deeply")
        first = code[0]
        if first == "h":
            if isinstance(value, bool) or not isinstance(value, int):
                raise WireError(f"a file descriptor index must be a number, not {value!r}")
            if not 0 <= value < len(fds):
                raise WireError(f"file descriptor index {value} of a message with {len(fds)}")
            used.add(value)
            return fds[value]
        if first == "v":
            return type(value)(value.signature, swap(value.signature, value.value, depth + 1))
        if first == "a":
            element = code[1:]
            if element[0] == "{":
                key, item = split_signature(element[1:-1])
                return {swap(key, k, depth + 1): swap(item, v, depth + 1) for k, v in value.items()}
            if element == "y":
                return value
            return [swap(element, item, depth + 1) for item in value]
        if first == "(":
            members = split_signature(code[1:-1])
            return [swap(m, item, depth + 1) for m, item in zip(members, value, strict=True)]
        return value

    if "h" not in signature and "v" not in signature:
        return list(values), used
    types = split_signature(signature)
    return [swap(t, v, 0) for t, v in zip(types, values, strict=True)], used


def close_fds(fds: Iterable[int]) -> None:
    for fd in fds:
        try:  # noqa: SIM105 (contextlib.suppress: one more import at every start)
            os.close(fd)
        except OSError:
            pass


def unmarshal(signature: str, body: bytes, little: bool = True) -> list[Any]:
    """The values of a message body with `signature`."""
    reader = _Reader(body, little)
    values = [reader.read(type_) for type_ in split_signature(signature)]
    if reader.pos != len(body):
        raise WireError("bytes left over after the body's values")
    return values


# ---- messages --------------------------------------------------------------------------------


class Message(Record):
    _fields = ("type", "serial", "fields", "body", "unix_fds")
    __slots__ = _fields
    type: int
    serial: int
    fields: dict[int, Any]
    body: list[Any]
    #: The fds that came with it (as many as its UNIX_FDS field says); its `h` values index
    #: them.
    unix_fds: tuple[int, ...]

    def __init__(
        self,
        type: int,
        serial: int,
        fields: dict[int, Any],
        body: list[Any],
        unix_fds: tuple[int, ...] = (),
    ) -> None:
        self._init(type, serial, fields, body, unix_fds)

    @property
    def reply_serial(self) -> int | None:
        value = self.fields.get(REPLY_SERIAL)
        return value if isinstance(value, int) else None


def encode_message(
    message_type: int,
    flags: int,
    serial: int,
    fields: dict[int, Variant],
    signature: str,
    body: Sequence[Any],
) -> bytes:
    """A whole message, little-endian: the header (its fields in code order) and the body.
    `fields` are the header fields but the signature, which is added from `signature`."""
    payload = marshal(signature, body)
    if signature:
        fields = {**fields, SIGNATURE: Variant("g", signature)}
    header = _Writer()
    header.buffer.extend(b"l" + bytes([message_type, flags, 1]))
    header.buffer.extend(struct.pack("<II", len(payload), serial))
    header.write("a(yv)", [[code, fields[code]] for code in sorted(fields)])
    header.align(8)
    return bytes(header.buffer) + payload


def _call_bytes(
    serial: int,
    destination: str,
    path: str,
    interface: str,
    member: str,
    signature: str,
    body: Sequence[Any],
) -> bytes:
    fields = {
        PATH: Variant("o", path),
        INTERFACE: Variant("s", interface),
        MEMBER: Variant("s", member),
        DESTINATION: Variant("s", destination),
    }
    return encode_message(METHOD_CALL, 0, serial, fields, signature, body)


def _parse_message(data: bytes) -> Message:
    little = data[0:1] == b"l"
    reader = _Reader(data, little)
    reader.take(4)
    order = "<" if little else ">"
    body_length, serial = struct.unpack(order + "II", reader.take(8))
    raw_fields = reader.read("a(yv)")
    reader.align(8)
    fields: dict[int, Any] = {}
    for code, variant in raw_fields:
        wanted = _HEADER_FIELD_TYPES.get(code)
        if wanted is not None and variant.signature != wanted:
            raise WireError(f"header field {code} has type {variant.signature!r}")
        fields[code] = variant.value
    body = data[reader.pos : reader.pos + body_length]
    values = unmarshal(str(fields.get(SIGNATURE, "")), body, little) if body_length else []
    return Message(data[1], serial, fields, values)


def _message_length(header: bytes) -> int:
    """The whole length of the message whose first 16 bytes are `header`."""
    if header[0:1] not in (b"l", b"B") or header[3] != 1:
        raise WireError("not a D-Bus message (bad byte order or protocol version)")
    order = "<" if header[0:1] == b"l" else ">"
    body_length, _serial, fields_length = struct.unpack(order + "III", header[4:16])
    total: int = 16 + fields_length + (-fields_length % 8) + body_length
    if total > MAX_MESSAGE:
        raise WireError(f"message of {total} bytes is larger than the specification allows")
    return total


# ---- the connection --------------------------------------------------------------------------


def _unescape(value: str) -> str:
    """A D-Bus address value with its `%XX` escapes decoded."""
    if "%" not in value:
        return value  # the usual address: urllib.parse is not imported for it
    from urllib.parse import unquote

    return unquote(value)


def _socket_address(address: str) -> str | bytes:
    """The first usable `unix:` address of a D-Bus address list."""
    for entry in address.split(";"):
        transport, _, rest = entry.partition(":")
        if transport != "unix":
            continue
        keys = dict(part.partition("=")[::2] for part in rest.split(",") if part)
        if "path" in keys:
            return _unescape(keys["path"])
        if "abstract" in keys:
            return b"\0" + _unescape(keys["abstract"]).encode()
    raise WireError(f"no unix: address in {address!r}")


class Connection:
    """One authenticated connection to a bus; `call` blocks until the reply (or `timeout`).

    `unix_fds` asks the bus for Unix fd passing during authentication; `self.unix_fds` says
    whether it agreed. A reply's `h` values are then fds the caller owns.
    """

    def __init__(
        self, address: str | None = None, timeout: float = 25.0, *, unix_fds: bool = True
    ) -> None:
        self.address = address or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or SYSTEM_BUS_ADDRESS
        self.timeout = timeout
        self.unix_fds = False
        self._negotiate_unix_fds = unix_fds
        self._serial = 0
        self._buffer = b""
        #: fds received and not yet given to the message they came with, oldest first.
        self._fds: list[int] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(_socket_address(self.address))
            self._authenticate()
            (self.unique_name,) = self.call(
                "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "Hello"
            )
        except OSError as e:
            self._sock.close()
            raise WireError(f"cannot connect to {self.address}: {e.strerror or e}") from e
        except BaseException:
            self._sock.close()
            raise

    def close(self) -> None:
        self._sock.close()
        close_fds(self._fds)
        self._fds = []

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def call(
        self,
        destination: str,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: Sequence[Any] = (),
    ) -> list[Any]:
        """Call a method and return the reply's values; `CallError` if it answers an error."""
        self._serial += 1
        serial = self._serial
        data = _call_bytes(serial, destination, path, interface, member, signature, body)
        try:
            self._sock.sendall(data)
            while True:
                message = self._receive()
                if message.reply_serial != serial or message.type != METHOD_RETURN:
                    # A signal, the answer to nothing we asked, or an error: no fd is ours.
                    close_fds(message.unix_fds)
                if message.reply_serial != serial:
                    continue
                if message.type == ERROR:
                    text = (
                        message.body[0] if message.body and isinstance(message.body[0], str) else ""
                    )
                    raise CallError(str(message.fields.get(ERROR_NAME, "")), text)
                if message.type == METHOD_RETURN:
                    return self._owned_values(message)
        except TimeoutError as e:
            raise WireError(f"no answer to {member} within {self.timeout:g} s") from e
        except OSError as e:
            raise WireError(f"{member}: the connection failed: {e.strerror or e}") from e

    # ---- internals -------------------------------------------------------------------------

    def _owned_values(self, message: Message) -> list[Any]:
        """A reply's values, its `h` indexes replaced by its fds (the caller's now); the fds
        no value names are closed."""
        fds = message.unix_fds
        signature = str(message.fields.get(SIGNATURE, ""))
        try:
            values, used = with_fds(signature, message.body, fds)
        except BaseException:
            close_fds(fds)
            raise
        close_fds(fd for index, fd in enumerate(fds) if index not in used)
        return values

    def _authenticate(self) -> None:
        uid = str(os.geteuid()).encode().hex().encode()
        self._sock.sendall(b"\0AUTH EXTERNAL " + uid + b"\r\n")
        line = self._line()
        if not line.startswith(b"OK "):
            raise WireError(f"the bus refused authentication: {line.decode(errors='replace')}")
        if not self._negotiate_unix_fds:
            self._sock.sendall(b"BEGIN\r\n")
            return
        # BEGIN goes with the question: the answer comes before any message either way, and
        # the connection costs no extra round trip.
        self._sock.sendall(b"NEGOTIATE_UNIX_FD\r\nBEGIN\r\n")
        answer = self._line()
        if answer == b"AGREE_UNIX_FD":
            self.unix_fds = True
        elif not answer.startswith(b"ERROR"):
            raise WireError(
                f"unexpected answer to NEGOTIATE_UNIX_FD: {answer.decode(errors='replace')}"
            )

    def _recv(self, size: int) -> bytes:
        """Up to `size` bytes; fds that come with them are kept for their message."""
        if not self.unix_fds:
            return self._sock.recv(size)
        data, ancillary, _flags, _address = self._sock.recvmsg(
            size, socket.CMSG_SPACE(MAX_UNIX_FDS * 4), socket.MSG_CMSG_CLOEXEC
        )
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                self._fds.extend(fds)
        if len(self._fds) > MAX_UNIX_FDS:
            # More than any message may carry: the rest are not kept (their message, if any,
            # then lacks them and is refused).
            close_fds(self._fds[MAX_UNIX_FDS:])
            del self._fds[MAX_UNIX_FDS:]
        return data

    def _line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            if len(self._buffer) > 4096:
                raise WireError("authentication line too long")
            self._fill()
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line

    def _fill(self) -> None:
        chunk = self._recv(64 * 1024)
        if not chunk:
            raise WireError("the bus closed the connection")
        self._buffer += chunk

    def _receive(self) -> Message:
        while len(self._buffer) < 16:
            self._fill()
        total = _message_length(self._buffer[:16])
        chunks = [self._buffer]
        have = len(self._buffer)
        while have < total:
            chunk = self._recv(max(64 * 1024, total - have))
            if not chunk:
                raise WireError("the bus closed the connection")
            chunks.append(chunk)
            have += len(chunk)
        data = b"".join(chunks)
        self._buffer = data[total:]
        try:
            message = _parse_message(data[:total])
        except WireError:
            close_fds(self._fds)
            self._fds = []
            raise
        declared = message.fields.get(UNIX_FDS, 0)
        if not declared and not self._fds:
            return message
        return message.replace(unix_fds=self._take_fds(declared))

    def _take_fds(self, declared: int) -> tuple[int, ...]:
        """The fds of a message that declares `declared` (its UNIX_FDS field): the oldest
        received. Received fds beyond them, when no further message has begun, are closed."""
        if declared > len(self._fds):
            close_fds(self._fds)
            self._fds = []
            raise WireError(f"a message declares {declared} file descriptors but came with fewer")
        taken = tuple(self._fds[:declared])
        del self._fds[:declared]
        if not self._buffer and self._fds:
            close_fds(self._fds)
            self._fds = []
        return taken
