"""mdevd.bus.sendfix in isolation: what a full send buffer looks like to the writer, and the
refusal to patch a dbus-fast it was not verified against. (The end-to-end proof, with and
without the fix, is test_send_buffer.py.)"""

from __future__ import annotations

import array
import asyncio
import os
import socket
from collections.abc import Iterator

import dbus_fast.aio.message_bus as aio_message_bus
import pytest
from dbus_fast.aio import MessageBus

from mdevd.bus import sendfix


@pytest.fixture
def full_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A non-blocking unix stream pair whose sending side's buffer is full."""
    sender, receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sender.setblocking(False)
    with sender, receiver:
        try:
            while True:
                sender.send(b"x" * 65536)
        except BlockingIOError:
            pass
        yield sender, receiver


def _drain(receiver: socket.socket) -> bytes:
    receiver.setblocking(False)
    data = b""
    try:
        while chunk := receiver.recv(1 << 20):
            data += chunk
    except BlockingIOError:
        pass
    return data


def test_a_full_buffer_means_nothing_sent(full_pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = full_pair
    with pytest.raises(BlockingIOError):
        sender.send(b"message")  # what dbus-fast's writer sees, and dies of
    wrapped = sendfix._SendBufferTolerantSocket(sender)
    assert wrapped.send(memoryview(b"message")) == 0
    _drain(receiver)
    assert wrapped.send(memoryview(b"message")) == len(b"message")
    assert _drain(receiver) == b"message"


def test_file_descriptors_refused_by_a_full_buffer_go_with_the_next_send(
    full_pair: tuple[socket.socket, socket.socket],
) -> None:
    sender, receiver = full_pair
    wrapped = sendfix._SendBufferTolerantSocket(sender)
    read_end, write_end = os.pipe()
    try:
        fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [write_end]))]
        assert wrapped.sendmsg([memoryview(b"message")], fds) == 0
        _drain(receiver)
        # dbus-fast forgets the descriptors after sendmsg() and retries with send().
        assert wrapped.send(memoryview(b"message")) == len(b"message")
        message, received, _, _ = socket.recv_fds(receiver, 100, 4)
        assert message == b"message"
        assert len(received) == 1
        os.write(received[0], b"!")
        assert os.read(read_end, 1) == b"!"
        os.close(received[0])
    finally:
        os.close(read_end)
        os.close(write_end)


def test_install_is_idempotent_and_patches_new_connections(bus_address: str) -> None:
    sendfix.install()
    patched = aio_message_bus._MessageWriter.__init__
    sendfix.install()
    assert aio_message_bus._MessageWriter.__init__ is patched
    assert sendfix.installed()

    async def writer_socket() -> object:
        bus = await MessageBus(bus_address=bus_address).connect()
        try:
            # Private, but it is exactly what the fix replaces.
            return bus._writer.sock  # type: ignore[union-attr]
        finally:
            bus.disconnect()

    assert isinstance(asyncio.run(writer_socket()), sendfix._SendBufferTolerantSocket)


def test_other_dbus_fast_versions_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sendfix, "_dbus_fast_version", "5.3.0")
    with pytest.raises(sendfix.UnsupportedDbusFast, match=r"dbus-fast 5\.3\.0 is installed"):
        sendfix.check_supported()


def test_a_compiled_writer_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = "/x/dbus_fast/aio/message_bus.cpython-311-x86_64-linux-gnu.so"
    monkeypatch.setattr(aio_message_bus, "__file__", compiled)
    with pytest.raises(sendfix.UnsupportedDbusFast, match="not the pure-Python"):
        sendfix.check_supported()


def test_the_installed_dbus_fast_is_supported() -> None:
    sendfix.check_supported()
