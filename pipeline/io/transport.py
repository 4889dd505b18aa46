"""Opening the raw (still compressed) bytes of an input file: local, s3://, gs://, http(s)://."""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

from pipeline.io.compression import READ_BUFFER

__all__ = ["open_raw", "random_access", "spool"]


def open_raw(uri: str) -> Any:
    """The raw (still compressed) byte stream of a file, through smart_open."""
    import smart_open

    return smart_open.open(uri, "rb", compression="disable")


def random_access(raw: Any, uri: str) -> bool:
    """Whether `raw` can seek (Parquet needs it): an HTTP server may ignore range requests,
    and smart_open then refuses to seek."""
    if not uri.lower().startswith(("http://", "https://")):
        return True
    try:
        raw.seek(1)
        raw.seek(0)
    except Exception:
        return False
    return True


def spool(stream: Any) -> Any:
    """Copy a stream to an anonymous temporary file (deleted on close), positioned at 0."""
    tmp = tempfile.TemporaryFile(prefix="pipeline-parquet-")
    try:
        shutil.copyfileobj(stream, tmp, READ_BUFFER)
        tmp.seek(0)
    except BaseException:
        tmp.close()
        raise
    return tmp
