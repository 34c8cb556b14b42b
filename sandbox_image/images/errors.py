"""The one exception family of the image store: every refusal a user can hit is an `ImageError`
whose message says what was refused and, where it helps, what to do."""

from __future__ import annotations


class ImageError(Exception):
    """An image could not be resolved, fetched, verified or unpacked."""


class ImageNotFound(ImageError):
    """The reference names nothing this store or its sources know."""


class PlatformNotFound(ImageNotFound):
    """An index (manifest list) with no entry for the wanted platform."""


class DigestMismatch(ImageError):
    """A blob's content does not hash to the digest that names it."""


class UnsafeArchive(ImageError):
    """A layer tries to write outside the rootfs, or holds something the store refuses."""


class SizeLimitExceeded(ImageError):
    """An image needs more bytes (or entries) than the store allows one image."""


class UnsupportedImage(ImageError):
    """A format, media type or compression this store cannot read."""
