"""Record a vfio-user conversation as a wire transcript (see README.md here).

    python3 tests/unit/passthrough/transcripts/record.py --listen CLIENT.sock \
        --upstream SERVER.sock --out transcript.json [--peer NAME] [--note TEXT]

Listens on ``--listen``, relays the first connection to the server at ``--upstream``
message by message in both directions (descriptors passed on as ``SCM_RIGHTS``), and
writes every message to ``--out`` when either side closes. A manual tool: CI replays the
transcripts it wrote (``test_transcripts.py``), it never runs this.

The format is ``transcript.py``'s.
"""

from __future__ import annotations

import argparse
import array
import os
import selectors
import socket
import stat
import struct
import sys

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from transcript import FORMAT, dump, message_record
else:
    from .transcript import FORMAT, dump, message_record

_HEADER = struct.Struct("=HHIII")
_FD_ROOM = socket.CMSG_SPACE(253 * 4)


def _fd_size(fd: int) -> int | None:
    try:
        info = os.fstat(fd)
    except OSError:
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


class _Direction:
    """One direction of the relay, read message by message.

    Each message is read with exact-size reads (header, then payload), as the peers do:
    a Linux stream socket hands a message's descriptors to the read that reaches the first
    byte of the ``sendmsg`` that carried them, and a read never runs past a message it was
    not asked for, so descriptors stay with their own message.
    """

    def __init__(self, name: str, src: socket.socket, dst: socket.socket, log: list[dict[str, object]]) -> None:
        self.name, self.src, self.dst, self.log = name, src, dst, log

    def _read(self, count: int, fds: list[int]) -> bytes:
        out = bytearray()
        while len(out) < count:
            data, ancillary, _, _ = self.src.recvmsg(count - len(out), _FD_ROOM)
            for level, kind, blob in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    got = array.array("i")
                    got.frombytes(blob[: len(blob) - len(blob) % 4])
                    fds.extend(got)
            if not data:
                break
            out += data
        return bytes(out)

    def pump(self) -> bool:
        fds: list[int] = []
        head = self._read(_HEADER.size, fds)
        if len(head) < _HEADER.size:
            return False
        msg_id, command, size, flags, error_no = _HEADER.unpack(head)
        payload = self._read(max(size - _HEADER.size, 0), fds)
        self.log.append(message_record(self.name, msg_id, command, flags, error_no, payload, [_fd_size(fd) for fd in fds]))
        message = head + payload
        if fds:
            self.dst.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())])
            for fd in fds:
                os.close(fd)
        else:
            self.dst.sendall(message)
        return len(payload) == max(size - _HEADER.size, 0)


def main(argv: list[str] | None = None) -> int:
    """Relay one connection and write its transcript."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--peer", default="")
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    if os.path.exists(args.listen):
        os.unlink(args.listen)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(args.listen)
    listener.listen(1)
    print(f"record: listening on {args.listen}", file=sys.stderr, flush=True)
    client, _ = listener.accept()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.connect(args.upstream)
    log: list[dict[str, object]] = []
    directions = {client.fileno(): _Direction("c2s", client, server, log), server.fileno(): _Direction("s2c", server, client, log)}
    selector = selectors.DefaultSelector()
    for sock in (client, server):
        selector.register(sock, selectors.EVENT_READ)
    try:
        running = True
        while running:
            for key, _ in selector.select():
                try:
                    running = directions[key.fd].pump() and running
                except OSError:
                    running = False
    finally:
        document = {"format": FORMAT, "version": 1, "peer": args.peer, "note": args.note, "messages": log}
        with open(args.out, "w") as out:
            out.write(dump(document))
        client.close()
        server.close()
        listener.close()
        os.unlink(args.listen)
    print(f"record: {len(log)} messages written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
