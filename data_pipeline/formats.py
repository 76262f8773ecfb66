"""What an input file holds, told from its first bytes as well as its name.

A file's name is a hint, not a promise: crawl dumps arrive as ``part-0001``,
a WuDao ``.json`` is one JSON array rather than JSON lines, and a Common Crawl
``.warc.gz`` would otherwise be parsed line by line as JSON. So the container
(gzip, zstd) is read from the magic bytes, and the format from the first bytes
after decompression; the extension only decides between formats that look
alike (``.txt`` text that happens to start with ``{``).
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import Any

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
PARQUET_MAGIC = b"PAR1"
SNIFF_BYTES = 4096  # enough to skip a BOM and leading blank lines before the first record

WARC = "warc"
JSONL = "jsonl"
JSON_ARRAY = "json_array"
PARQUET = "parquet"
TEXT = "text"


def compression(path: str) -> str | None:
    """'gzip', 'zstd' or None, from the magic bytes (the extension is not trusted)."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return None


class ZstdFrames(io.RawIOBase):
    """Decompress zstd frames one after another; raise EOFError when the file ends inside a frame.

    zstandard's own ``stream_reader`` ends a truncated file with a silent short
    read, so a cut ``.jsonl.zst`` would look complete. A frame cut short is the
    usual damage (a copy or an upload that stopped), and the report must say so.
    """

    CHUNK = 1 << 16  # compressed bytes per step: bounds the output held at once; as fast as stream_reader on text

    def __init__(self, path: str) -> None:
        import zstandard

        self._fh = open(path, "rb")
        self._dctx = zstandard.ZstdDecompressor()
        self._dobj = self._dctx.decompressobj()
        self._in_frame = False
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not len(self._buf):
            chunk = self._fh.read(self.CHUNK)
            if not chunk:
                if self._in_frame:
                    raise EOFError("zstd frame incomplete: the file ends inside a frame")
                return 0
            self._buf = memoryview(self._decompress(chunk))
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def _decompress(self, chunk: bytes) -> bytes:
        out = []
        while chunk:
            out.append(self._dobj.decompress(chunk))
            self._in_frame = True
            if self._dobj.eof:  # frame complete: whatever follows starts the next one
                chunk = self._dobj.unused_data
                self._dobj = self._dctx.decompressobj()
                self._in_frame = False
            else:
                chunk = b""
        return b"".join(out)

    def close(self) -> None:
        fh = getattr(self, "_fh", None)  # absent when __init__ failed to open the file
        if fh is not None:
            fh.close()
        super().close()


def open_decompressed(path: str) -> io.BufferedIOBase:
    """The file's bytes after gzip/zstd decompression (chosen by magic bytes)."""
    kind = compression(path)
    if kind == "gzip":
        return gzip.open(path, "rb")
    if kind == "zstd":
        return io.BufferedReader(ZstdFrames(path), buffer_size=1 << 20)
    return open(path, "rb")


def _head(path: str) -> bytes:
    """The first decompressed bytes; whatever could be read when the stream is damaged early."""
    try:
        with open_decompressed(path) as fh:
            return fh.read(SNIFF_BYTES)
    except Exception:  # a damaged stream: the reader chosen by name reports the damage with its line
        return b""


def detect_format(path: str) -> str:
    """One of WARC, JSONL, JSON_ARRAY, PARQUET, TEXT for an existing, non-empty file.

    Order: Parquet magic; ``WARC/`` at the start (WARC and WET alike: a WET is
    a WARC of ``conversion`` records); a ``.txt`` name; a first non-blank
    byte ``[`` (one JSON array) or ``{`` (JSON lines); then the name; a file
    that is none of these is read as text when its name says nothing either.
    """
    with open(path, "rb") as fh:
        if fh.read(4) == PARQUET_MAGIC:
            return PARQUET
    name = Path(path).name.lower()
    head = _head(path)
    if head.startswith(b"WARC/"):
        return WARC
    if ".txt" in name:
        return TEXT
    first = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if first == b"[":
        return JSON_ARRAY
    if first == b"{":
        return JSONL
    if ".parquet" in name:
        return PARQUET  # named Parquet without the magic: the Parquet reader says why it cannot open it
    if ".warc" in name or ".wet" in name:
        return WARC
    if ".json" in name or not head:
        return JSONL  # JSON by name (or unreadable head): bad lines are quarantined one by one
    return TEXT
