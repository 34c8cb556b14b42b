"""Byte streams of a layer: counted and hashed as they are read, decompressed by magic number.

A layer is read once, front to back (it may come from a pipe): the compressed digest, the
uncompressed digest (the config's `diff_id`) and both sizes are computed on the way through
and checked by `LayerStream.verify` after the tar has been consumed."""

from __future__ import annotations

import gzip
import hashlib
import io
import zlib
from typing import BinaryIO

from .errors import DigestMismatch, ImageError, SizeLimitExceeded, UnsupportedImage

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_DRAIN = 1 << 20


class HashingReader(io.RawIOBase):
    """Reads `raw`, hashing (sha256) and counting every byte handed out. `limit`, if set, is
    the most bytes it will hand out; one more raises `SizeLimitExceeded` naming `what`."""

    def __init__(self, raw: BinaryIO, what: str, limit: int | None = None) -> None:
        self._raw = raw
        self._what = what
        self._hash = hashlib.sha256()
        self._pending = b""
        self.limit = limit
        self.count = 0

    def readable(self) -> bool:
        return True

    def peek(self, n: int) -> bytes:
        """Up to `n` bytes from the front of the stream, without consuming them."""
        while len(self._pending) < n:
            chunk = self._raw.read(n - len(self._pending))
            if not chunk:
                break
            self._pending += chunk
        return self._pending[:n]

    def readinto(self, buf) -> int:  # type: ignore[override]
        view = memoryview(buf).cast("B")
        if self._pending:
            n = min(len(view), len(self._pending))
            view[:n] = self._pending[:n]
            self._pending = self._pending[n:]
        else:
            data = self._raw.read(len(view))
            n = len(data)
            view[:n] = data
        if n:
            self._hash.update(view[:n])
            self.count += n
            if self.limit is not None and self.count > self.limit:
                raise SizeLimitExceeded(f"{self._what}: more than {self.limit} bytes")
        return n

    def drain(self) -> None:
        """Read (and hash) whatever is left."""
        while self.read(_DRAIN):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


def _zstd_reader(raw: BinaryIO, what: str) -> BinaryIO:
    try:  # Python 3.14+
        from compression import zstd  # type: ignore[import-not-found]
        return zstd.ZstdFile(raw)  # type: ignore[no-any-return]
    except ImportError:
        pass
    try:
        import zstandard  # type: ignore[import-not-found]
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)  # type: ignore[no-any-return]
    except ImportError:
        raise UnsupportedImage(
            f"{what} is zstd-compressed, which this Python cannot read (it needs Python 3.14's "
            "compression.zstd or the zstandard package); re-export the image with gzip layers, e.g. "
            "`skopeo copy --dest-compress-format gzip ...`") from None


class LayerStream:
    """One layer opened for reading: `.tar` is the uncompressed tar byte stream. After the tar
    has been read, call `verify()` to drain both streams and check digests and sizes."""

    def __init__(self, raw: BinaryIO, what: str, max_uncompressed: int) -> None:
        self.what = what
        self.compressed = HashingReader(raw, what)
        magic = self.compressed.peek(4)
        inner: BinaryIO
        if magic.startswith(GZIP_MAGIC):
            inner = gzip.GzipFile(fileobj=self.compressed, mode="rb")  # type: ignore[arg-type]
        elif magic.startswith(ZSTD_MAGIC):
            inner = _zstd_reader(self.compressed, what)  # type: ignore[arg-type]
        else:
            inner = self.compressed  # type: ignore[assignment]
        self.tar = HashingReader(inner, f"{what} (uncompressed)", limit=max_uncompressed)

    def verify(self, digest: str | None, size: int | None, diff_id: str | None) -> None:
        try:
            self.tar.drain()
            self.compressed.drain()
        except (OSError, EOFError, zlib.error) as e:
            raise ImageError(f"{self.what}: corrupt compressed stream: {e}") from None
        if digest is not None and self.compressed.digest != digest:
            raise DigestMismatch(f"{self.what}: content hashes to {self.compressed.digest}, expected {digest}")
        if size is not None and self.compressed.count != size:
            raise DigestMismatch(f"{self.what}: {self.compressed.count} bytes, descriptor says {size}")
        if diff_id is not None and self.tar.digest != diff_id:
            raise DigestMismatch(
                f"{self.what}: uncompressed content hashes to {self.tar.digest}, config diff_id is {diff_id}")
