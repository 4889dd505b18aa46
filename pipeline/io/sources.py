"""Expanding `input.paths` into a sorted list of concrete input files.

A path may be a local file, folder (read recursively) or glob; an ``s3://`` or ``gs://``
object, prefix or glob; or an ``http(s)://`` URL. Each file gets a normalized URI, its size,
a fingerprint that changes when its content changes (for incremental runs), and its
record format and compression, resolved from the extension unless `input.format` forces
the format.
"""

from __future__ import annotations

import fnmatch
import glob as _glob
import hashlib
import os
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any, Iterable

from pipeline.config import InputConfig
from pipeline.errors import UsageError

__all__ = ["InputError", "SourceFile", "list_sources", "detect_compression", "detect_format"]


class InputError(UsageError):
    """Bad input configuration: a path matching nothing, an unknown format... The message says what to do."""


@dataclass(frozen=True)
class SourceFile:
    uri: str  # absolute local path (no file://) or full URI (s3://b/k, gs://b/k, https://...)
    size: int  # bytes, -1 if unknown
    fingerprint: str  # changes when the content changes
    format: str  # 'jsonl' | 'csv' | 'text' | 'parquet' | 'openai_batch'
    compression: str | None  # 'gzip' | 'bz2' | 'zstd' | None

    @property
    def key(self) -> str:
        """Stable short id of the file (sha1 of its URI, 16 hex chars), used in unit ids."""
        return hashlib.sha1(self.uri.encode("utf-8", "surrogateescape")).hexdigest()[:16]


COMPRESSION_EXTENSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".zstd": "zstd"}
FORMAT_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "text",
    ".text": "text",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_GLOB_CHARS = re.compile(r"[*?\[]")
_SUPPORTED = "local paths, s3://, gs://, http:// and https://"


# --------------------------------------------------------------------------- names


def _basename(uri: str) -> str:
    if "://" in uri:
        path = urllib.parse.urlsplit(uri).path
        return path.rstrip("/").rsplit("/", 1)[-1]
    return os.path.basename(uri)


def detect_compression(uri: str) -> str | None:
    """'gzip' / 'bz2' / 'zstd' from the file extension, else None."""
    name = _basename(uri).lower()
    for ext, comp in COMPRESSION_EXTENSIONS.items():
        if name.endswith(ext):
            return comp
    return None


def detect_format(uri: str, forced: str = "auto") -> str:
    """Record format from the extension after the compression extension, or `forced`."""
    compression = detect_compression(uri)
    name = _basename(uri).lower()
    if compression:
        name = name[: name.rfind(".")]
    if forced != "auto":
        fmt = forced
    else:
        ext = os.path.splitext(name)[1]
        fmt = FORMAT_EXTENSIONS.get(ext)
        if fmt is None:
            shown = ext or "(no extension)"
            raise InputError(
                f"{uri}: cannot tell the record format from the extension {shown!r}; "
                f"known extensions: {', '.join(FORMAT_EXTENSIONS)} (optionally followed by "
                f"{', '.join(COMPRESSION_EXTENSIONS)}). Set input.format (jsonl, csv, text or parquet) "
                "to read it anyway, or remove the file from input.paths"
            )
    return fmt


def _make(uri: str, size: int, fingerprint: str, cfg: InputConfig) -> SourceFile:
    return SourceFile(
        uri=uri,
        size=size,
        fingerprint=fingerprint,
        format=detect_format(uri, cfg.format),
        compression=detect_compression(uri),
    )


# ------------------------------------------------------------------- glob helpers


def _has_glob(s: str) -> bool:
    return bool(_GLOB_CHARS.search(s))


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Translate a path glob to a regex: '*' and '?' stay within one path segment, '**' spans segments."""
    i, n, out = 0, len(pattern), []
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = pattern.find("]", i + 2 if pattern.startswith("[!", i) or pattern.startswith("[]", i) else i + 1)
            if j < 0:
                out.append(re.escape(c))
                i += 1
            else:
                body = pattern[i + 1 : j]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def _is_hidden(name: str) -> bool:
    return name.startswith((".", "_"))


def _hidden_by_glob(rel_parts: Iterable[str], pattern_parts: list[str]) -> bool:
    """A '.'/'_' name found by a wildcard counts only if a pattern segment starting with that char matches it."""
    for part in rel_parts:
        if part and _is_hidden(part):
            if not any(p.startswith(part[0]) and fnmatch.fnmatchcase(part, p) for p in pattern_parts):
                return True
    return False


def _split_glob(path: str, sep: str = "/") -> tuple[str, str]:
    """(literal directory prefix ending with sep or '', rest) for a glob path."""
    m = _GLOB_CHARS.search(path)
    assert m is not None
    cut = path.rfind(sep, 0, m.start()) + 1
    return path[:cut], path[cut:]


# ------------------------------------------------------------------------ local


def _local_entry(path: str, cfg: InputConfig) -> SourceFile:
    st = os.stat(path)
    return _make(path, st.st_size, f"size:{st.st_size}:mtime_ns:{st.st_mtime_ns}", cfg)


def _walk_local(folder: str, cfg: InputConfig) -> list[SourceFile]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        for name in sorted(filenames):
            if not _is_hidden(name):
                full = os.path.join(dirpath, name)
                if os.path.isfile(full):
                    out.append(_local_entry(full, cfg))
    return out


def _list_local(raw: str, cfg: InputConfig) -> list[SourceFile]:
    p = raw[len("file://") :] if raw.startswith("file://") else raw
    path = os.path.abspath(os.path.expanduser(p))
    if os.path.isfile(path):
        return [_local_entry(path, cfg)]
    if os.path.isdir(path):
        return _walk_local(path, cfg)
    if not _has_glob(path):
        return []
    base, rest = _split_glob(path, os.sep)
    pattern_parts = rest.split(os.sep)
    out: list[SourceFile] = []
    for match in sorted(_glob.glob(path, recursive=True)):
        rel_parts = os.path.relpath(match, base or os.sep).split(os.sep)
        if _hidden_by_glob(rel_parts, pattern_parts):
            continue
        if os.path.isfile(match):
            out.append(_local_entry(os.path.abspath(match), cfg))
        elif os.path.isdir(match):
            out.extend(_walk_local(os.path.abspath(match), cfg))
    return out


# --------------------------------------------------------------------------- S3


def _split_bucket(uri: str) -> tuple[str, str]:
    rest = uri.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise InputError(f"{uri}: no bucket name; write it as scheme://bucket/key")
    return bucket, key


class _S3:
    scheme = "s3"

    def __init__(self, cfg: InputConfig) -> None:
        self._client: Any = None
        self._cfg = cfg

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            from pipeline.io.transport import RetryPolicy

            # a fresh session reads AWS_ENDPOINT_URL, credentials, profile... from the environment
            # now; timeouts and retries (botocore's standard mode) come from input.*
            config = RetryPolicy.of(self._cfg).botocore_config(retries=True)
            self._client = boto3.session.Session().client("s3", config=config)
        return self._client

    def _error(self, uri: str, exc: Exception) -> InputError:
        code = ""
        resp = getattr(exc, "response", None)
        if isinstance(resp, dict):
            code = str(resp.get("Error", {}).get("Code", ""))
        if code == "NoSuchBucket":
            return InputError(f"{uri}: the bucket does not exist")
        return InputError(
            f"{uri}: cannot list it: {type(exc).__name__}: {exc} (check credentials, AWS_ENDPOINT_URL and the bucket name)"
        )

    def list_prefix(self, bucket: str, prefix: str, uri: str) -> Iterable[tuple[str, int, str]]:
        """(key, size, etag) of every object under prefix."""
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []) or []:
                    yield obj["Key"], int(obj.get("Size", -1)), str(obj.get("ETag", "")).strip('"')
        except InputError:
            raise
        except Exception as exc:  # botocore errors, connection errors
            raise self._error(uri, exc) from exc

    def head(self, bucket: str, key: str, uri: str) -> tuple[int, str] | None:
        try:
            r = self.client.head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            resp = getattr(exc, "response", None)
            status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode") if isinstance(resp, dict) else None
            code = str(resp.get("Error", {}).get("Code", "")) if isinstance(resp, dict) else ""
            if status in (403, 404) or code in ("404", "NoSuchKey", "NotFound"):
                return None  # not an object (or not allowed to tell): try it as a prefix
            raise self._error(uri, exc) from exc
        return int(r.get("ContentLength", -1)), str(r.get("ETag", "")).strip('"')


class _GCS(_S3):
    scheme = "gs"

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                from google.cloud import storage  # type: ignore[import-not-found]
            except ImportError as exc:
                raise InputError(
                    "gs:// inputs need the Google Cloud Storage client: pip install google-cloud-storage"
                ) from exc
            self._client = storage.Client()
        return self._client

    def list_prefix(self, bucket: str, prefix: str, uri: str) -> Iterable[tuple[str, int, str]]:
        client = self.client
        try:
            for blob in client.list_blobs(bucket, prefix=prefix):
                tag = blob.etag or str(blob.generation or "")
                yield blob.name, int(blob.size if blob.size is not None else -1), tag
        except Exception as exc:
            raise InputError(f"{uri}: cannot list it: {type(exc).__name__}: {exc}") from exc

    def head(self, bucket: str, key: str, uri: str) -> tuple[int, str] | None:
        client = self.client
        try:
            blob = client.bucket(bucket).get_blob(key)
        except Exception as exc:
            raise InputError(f"{uri}: cannot read it: {type(exc).__name__}: {exc}") from exc
        if blob is None:
            return None
        return int(blob.size if blob.size is not None else -1), blob.etag or str(blob.generation or "")


def _list_object_store(uri: str, store: _S3, cfg: InputConfig) -> list[SourceFile]:
    bucket, key = _split_bucket(uri)
    base = f"{store.scheme}://{bucket}/"

    def entry(k: str, size: int, etag: str) -> SourceFile:
        return _make(base + k, size, f"size:{size}:etag:{etag}", cfg)

    def under(prefix: str) -> list[SourceFile]:
        out = []
        for k, size, etag in store.list_prefix(bucket, prefix, uri):
            if k.endswith("/"):
                continue  # folder marker
            rel_parts = k[len(prefix) :].split("/")
            if any(_is_hidden(p) for p in rel_parts):
                continue
            out.append(entry(k, size, etag))
        return out

    if key == "" or key.endswith("/"):
        return under(key)
    if _has_glob(key):
        prefix, rest = _split_glob(key)
        literal = key[: _GLOB_CHARS.search(key).start()]  # type: ignore[union-attr]
        rx = _glob_regex(key)
        pattern_parts = rest.split("/")
        out = []
        for k, size, etag in store.list_prefix(bucket, literal, uri):
            if k.endswith("/") or not rx.match(k):
                continue
            if _hidden_by_glob(k[len(prefix) :].split("/"), pattern_parts):
                continue
            out.append(entry(k, size, etag))
        return out
    found = store.head(bucket, key, uri)
    if found is not None:
        return [entry(key, *found)]
    return under(key + "/")


# ------------------------------------------------------------------------- HTTP


def _list_http(url: str, cfg: InputConfig) -> list[SourceFile]:
    import requests

    from pipeline.io.transport import RetryPolicy

    policy = RetryPolicy.of(cfg)

    def head() -> requests.Response:
        r = requests.head(url, headers={"Accept-Encoding": "identity"}, allow_redirects=True,
                          timeout=(policy.connect_timeout_s, policy.read_timeout_s))
        r.raise_for_status()
        return r

    size, tag = -1, ""
    try:
        resp = policy.call(head, f"HEAD {url}")
        length = resp.headers.get("Content-Length")
        size = int(length) if length and length.isdigit() else -1
        tag = (resp.headers.get("ETag") or resp.headers.get("Last-Modified") or "").strip()
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else None
        if code in (404, 410):
            raise InputError(f"{url}: the server answered {code} {exc.response.reason}; check the URL") from exc
        # 405 and friends: HEAD not allowed; the read itself will tell.
    except (OSError, ValueError):
        pass  # unreachable for HEAD now: reading it later reports a read_error row
    return [_make(url, size, f"size:{size}:etag-or-last-modified:{tag}", cfg)]


# ------------------------------------------------------------------------- main


def list_sources(cfg: InputConfig) -> list[SourceFile]:
    """Every input file named by cfg.paths, sorted by URI, without duplicates.

    Raises InputError when a path matches nothing, a file's format cannot be told from its
    extension, or a scheme is unsupported.
    """
    found: dict[str, SourceFile] = {}
    s3 = _S3(cfg)
    gcs = _GCS(cfg)
    for raw in cfg.paths:
        p = raw.strip()
        if not p:
            raise InputError("input.paths holds an empty path")
        scheme = p.split("://", 1)[0].lower() if "://" in p else ""
        if scheme in ("", "file"):
            files = _list_local(p, cfg)
        elif scheme in ("s3", "s3a", "s3n"):
            files = _list_object_store("s3://" + p.split("://", 1)[1], s3, cfg)
        elif scheme in ("gs", "gcs"):
            files = _list_object_store("gs://" + p.split("://", 1)[1], gcs, cfg)
        elif scheme in ("http", "https"):
            files = _list_http(p, cfg)
        else:
            raise InputError(f"{p}: unsupported URI scheme {scheme!r}; supported: {_SUPPORTED}")
        if not files:
            raise InputError(
                f"input path {p!r} matches no file (hidden files and names starting with '_' or '.' "
                "are skipped in folders); check the path"
            )
        for f in files:
            found.setdefault(f.uri, f)
    return [found[u] for u in sorted(found)]
