"""The reader's own receive limits, checked on chunk headers before asyncua buffers a byte of a chunk.

asyncua 2.1 checks chunk size, chunk count and message size only once a chunk has fully arrived,
and against limits the server's Acknowledge may overwrite (MaxMessageSize 0 and MaxChunkCount 0
mean "no limit", and a 2 GiB SendBufferSize raises the chunk limit). A hostile server can then
send one chunk whose header claims 4 GiB and stream into it: asyncua keeps appending to its
receive buffer (each read copying the whole buffer again) until memory runs out; or an endless run
of intermediate chunks, which asyncua keeps assembling (CVE-2022-25304). ``ChunkGuard`` reads
every chunk header as bytes arrive, with the limits the reader was configured with and nothing
the server said, and names the first one a server breaks.

The header (OPC UA Part 6, 7.1.2): MessageType (3 bytes), ChunkType ('C' intermediate, 'F' final,
'A' abort), MessageSize (UInt32, the whole chunk); secure chunks (MSG, OPN, CLO) then carry the
SecureChannelId, and a MSG chunk a TokenId, SequenceNumber and RequestId before its body.
"""

from __future__ import annotations

import struct

_HEADER = 8
_SECURE = (b"MSG", b"OPN", b"CLO")
_SECURE_HEADER = 12
_MSG_OVERHEAD = 24  # header, channel, token, sequence number, request id: the rest is body


class ChunkGuard:
    """The chunk headers of one connection's byte stream, in order, against fixed limits."""

    def __init__(self, max_chunk_bytes: int, max_message_size: int, max_chunk_count: int) -> None:
        self.max_chunk_bytes = max_chunk_bytes
        self.max_message_size = max_message_size
        self.max_chunk_count = max_chunk_count
        self._parts = 0  # chunks of the message being assembled
        self._body = 0  # and their body bytes

    def check(self, data: bytes | bytearray) -> str | None:
        """``data`` starts at a chunk boundary (asyncua hands back any incomplete chunk at the front
        of the next read). Returns what the server did wrong, or None; the message state advances
        over complete chunks only, so the incomplete tail is read again next time from its start."""
        pos, end = 0, len(data)
        while end - pos >= _HEADER:
            kind = bytes(data[pos:pos + 3])
            size = struct.unpack_from("<I", data, pos + 4)[0]
            if size > self.max_chunk_bytes:
                return f"a chunk of {size} bytes, above the reader's {self.max_chunk_bytes}-byte receive buffer"
            if size < (_SECURE_HEADER if kind in _SECURE else _HEADER):
                return f"a {kind!r} chunk whose header states {size} bytes, less than the header itself"
            if pos + size > end:
                break  # the rest of this chunk is still on its way
            if kind == b"MSG":
                problem = self._message_chunk(data[pos + 3], size)
                if problem:
                    return problem
            pos += size
        return None

    def _message_chunk(self, chunk_type: int, size: int) -> str | None:
        self._parts += 1
        self._body += max(0, size - _MSG_OVERHEAD)
        if self.max_chunk_count and self._parts > self.max_chunk_count:
            return f"a message of more than {self.max_chunk_count} chunks (edge.opcua.max_chunk_count)"
        if self.max_message_size and self._body > self.max_message_size:
            return f"a message of more than {self.max_message_size} bytes (edge.opcua.max_message_size)"
        if chunk_type != ord("C"):  # 'F' ends the message, 'A' aborts it
            self._parts = self._body = 0
        return None
