"""Decompressing a raw byte stream (gzip, bz2, zstd) as it is read, never whole.

Decompression is done here rather than by smart_open so that the raw stream's `tell()`
still counts compressed bytes (progress), and so that a stream that breaks keeps every
byte that could be decompressed before the break (a truncated file becomes rows and then
one read error, not only an error).
"""

from __future__ import annotations

import bz2
import gzip
import io
from typing import Any

__all__ = ["decompressed", "READ_BUFFER"]

READ_BUFFER = 1 << 20


def decompressed(raw: Any, compression: str | None) -> io.BufferedReader:
    """A buffered binary stream of the decompressed bytes of `raw`."""
    if compression is None:
        stream: Any = raw
    elif compression == "gzip":
        stream = gzip.GzipFile(fileobj=raw, mode="rb")
    elif compression == "bz2":
        stream = bz2.BZ2File(raw, mode="rb")
    elif compression == "zstd":
        stream = _ZstdReader(raw)
    else:
        raise ValueError(f"unknown compression {compression!r}")
    return io.BufferedReader(_OneRead(stream), buffer_size=READ_BUFFER)


class _ZstdReader(io.RawIOBase):
    """Streaming zstd decompression (all frames) that raises on a truncated last frame.

    zstandard's stream_reader returns a silent EOF when the input stops mid-frame; a file cut
    short must become a read_error, so frames are tracked here with decompressobj().
    """

    _CHUNK = 1 << 16

    def __init__(self, fp: Any) -> None:
        import zstandard

        super().__init__()
        self._fp = fp
        self._dctx = zstandard.ZstdDecompressor()
        self._dobj = self._dctx.decompressobj()
        self._pending = b""
        self._offset = 0
        self._in_frame = False
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while self._offset >= len(self._pending):
            if self._done:
                return 0
            chunk = self._fp.read(self._CHUNK)
            if not chunk:
                self._done = True
                if self._in_frame:
                    raise EOFError("zstd stream ended in the middle of a frame (truncated file)")
                return 0
            self._feed(chunk)
        n = min(len(b), len(self._pending) - self._offset)
        b[:n] = self._pending[self._offset : self._offset + n]
        self._offset += n
        return n

    def _feed(self, data: bytes) -> None:
        out = []
        while data:
            out.append(self._dobj.decompress(data))
            self._in_frame = True
            if self._dobj.eof:  # frame complete; what follows starts the next frame
                data = self._dobj.unused_data
                self._dobj = self._dctx.decompressobj()
                self._in_frame = False
            else:
                data = b""
        self._pending = b"".join(out)
        self._offset = 0


class _OneRead(io.RawIOBase):
    """Raw adapter whose readinto does one read1() of the stream below.

    A plain `BufferedReader(GzipFile)` asks for a full buffer at once, so when the stream
    breaks (a truncated gzip) the data decompressed before the break is lost with the
    exception; one read1() per fill keeps every byte that could be read.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__()
        self._stream = stream
        self._read = getattr(stream, "read1", None) or stream.read

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._read(len(b))
        n = len(data)
        b[:n] = data
        return n
