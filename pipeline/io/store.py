"""A tiny object-store view of the output folder (local path or s3://), with atomic writes.

Every write is all-or-nothing: locally a temp file renamed into place (and the directory
entry fsynced, so a power cut cannot lose a rename the protocol relied on), on S3 a single
PUT (an object appears only when complete). That is what makes commit records and the
manifest safe to read at any moment, and what a crash mid-write can never break.

Two conditional writes carry the protocol's compare-and-swap steps:

- `create(rel, data)`: create-if-absent. Locally a hard link of a complete temp file
  (`link` fails if the name exists); on S3 a PUT with `If-None-Match: *` (AWS S3 since
  2024, SeaweedFS, MinIO). A store that ignores that header is detected once by a probe,
  and then a documented best effort is used (check, put, read back).
- `replace_if(rel, data, tag)`: overwrite only if the object is still the one read with
  `tag`. On S3 a PUT with `If-Match: <ETag>`; locally the read-compare-rename runs under
  a POSIX lock (`lockf`) on a sidecar file.

An OSError that a person must act on (disk full, permission denied, read-only file
system, access denied on S3) becomes an `OutputError`: one line that says what to do.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import posixpath
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.errors import PipelineError

logger = logging.getLogger(__name__)

TMP_MARK = ".tmp-"  # temp files of atomic writes: `<name>.tmp-<8 hex>`; listings skip them


class OutputError(PipelineError):
    """The output cannot be written (disk full, permission denied, ...): the message says what to do."""


@dataclass(frozen=True)
class FileInfo:
    rel: str
    size: int
    mtime: float  # seconds since the epoch (S3: LastModified)


class Store:
    def __init__(self, root: str):
        self.root_uri = root
        if "://" in root and not root.startswith("file://"):
            self.fs, path = pafs.FileSystem.from_uri(root)
            self.local = False
            self.scheme = root.split("://", 1)[0]
        else:
            path = os.path.abspath(root.removeprefix("file://"))
            self.fs = pafs.LocalFileSystem()
            self.local = True
            self.scheme = "file"
        self.root = path.rstrip("/")
        self._s3: Any = None
        self._conditional: Optional[bool] = None  # S3: does the store honour If-None-Match?

    def __reduce__(self):  # ship by URI: filesystems re-resolve credentials where they land
        return (Store, (self.root_uri,))

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel) if rel else self.root

    def uri(self, rel: str) -> str:
        if self.local:
            return self.path(rel)
        return self.root_uri.rstrip("/") + "/" + rel

    # -- errors a person must act on ---------------------------------------------------
    @contextlib.contextmanager
    def _acting(self, what: str, rel: str) -> Iterator[None]:
        try:
            yield
        except PipelineError:
            raise
        except OSError as e:
            hint = _output_problem(e)
            if hint is None:
                raise
            raise OutputError(
                f"cannot {what} {self.uri(rel)}: {hint}. Committed parts are kept: the same command resumes."
            ) from e
        except Exception as e:  # boto3's ClientError is no OSError
            code = _client_error_code(e)
            if code in ("AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise OutputError(
                    f"cannot {what} {self.uri(rel)}: access denied ({code}); check the credentials "
                    "(AWS_ACCESS_KEY_ID, ...) and the bucket policy, then rerun"
                ) from e
            raise

    # -- writes (atomic) ------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> None:
        dest = self.path(rel)
        with self._acting("write", rel):
            if self.local:
                parent = posixpath.dirname(dest)
                os.makedirs(parent, exist_ok=True)
                tmp = self._write_tmp(dest, data)
                os.replace(tmp, dest)
                _fsync_dir(parent)
            else:
                with self.fs.open_output_stream(dest) as f:
                    f.write(data)

    def _write_tmp(self, dest: str, data: bytes) -> str:
        tmp = f"{dest}{TMP_MARK}{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return tmp

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, _json_bytes(obj))

    def write_parquet(self, rel: str, table: pa.Table) -> int:
        data = parquet_bytes(table)
        self.write_bytes(rel, data)
        return len(data)

    # -- conditional writes -----------------------------------------------------------
    def create(self, rel: str, data: bytes) -> bool:
        """Create `rel` with `data` unless it exists; True if this call created it."""
        dest = self.path(rel)
        with self._acting("write", rel):
            if self.local:
                parent = posixpath.dirname(dest)
                os.makedirs(parent, exist_ok=True)
                tmp = self._write_tmp(dest, data)
                try:
                    os.link(tmp, dest)  # atomic, and fails if the name exists
                except FileExistsError:
                    return False
                except OSError as e:  # a file system without hard links: O_EXCL, content not atomic
                    if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                        raise
                    return self._create_excl(dest, data)
                finally:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                _fsync_dir(parent)
                return True
            return self._s3_create(rel, data)

    @staticmethod
    def _create_excl(dest: str, data: bytes) -> bool:
        try:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return True

    def create_json(self, rel: str, obj: Any) -> bool:
        return self.create(rel, _json_bytes(obj))

    def read_tagged(self, rel: str) -> Optional[tuple[bytes, str]]:
        """(content, tag) of `rel`, or None; the tag is what `replace_if` compares."""
        if self.local:
            try:
                with open(self.path(rel), "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                return None
            return data, _digest(data)
        bucket, key = self._bucket_key(rel)
        client = self._client()
        try:
            r = client.get_object(Bucket=bucket, Key=key)
        except Exception as e:  # noqa: BLE001
            if _client_error_code(e) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        return r["Body"].read(), r["ETag"]

    def replace_if(self, rel: str, data: bytes, tag: str) -> Optional[str]:
        """Overwrite `rel` if it is still the version read with `tag`; the new tag, or None."""
        with self._acting("write", rel):
            if self.local:
                dest = self.path(rel)
                with _locked(dest + ".lock"):
                    try:
                        with open(dest, "rb") as f:
                            if _digest(f.read()) != tag:
                                return None
                    except FileNotFoundError:
                        return None
                    tmp = self._write_tmp(dest, data)
                    os.replace(tmp, dest)
                    _fsync_dir(posixpath.dirname(dest))
                return _digest(data)
            bucket, key = self._bucket_key(rel)
            client = self._client()
            if not self.conditional_writes():
                cur = self.read_tagged(rel)  # best effort: compare, then put
                if cur is None or cur[1] != tag:
                    return None
                return client.put_object(Bucket=bucket, Key=key, Body=data)["ETag"]
            try:
                return client.put_object(Bucket=bucket, Key=key, Body=data, IfMatch=tag)["ETag"]
            except Exception as e:  # noqa: BLE001
                if _client_error_code(e) in ("PreconditionFailed", "412", "NoSuchKey", "ConditionalRequestConflict"):
                    return None
                raise

    # -- S3 details ---------------------------------------------------------------------
    def _bucket_key(self, rel: str) -> tuple[str, str]:
        full = self.path(rel)
        bucket, _, key = full.partition("/")
        return bucket, key

    def _client(self) -> Any:
        if self._s3 is None:
            if self.scheme not in ("s3", "s3a"):
                raise OutputError(f"{self.root_uri}: conditional writes are implemented for local folders and s3:// only")
            import boto3

            self._s3 = boto3.client("s3")  # endpoint, region and keys from the usual AWS settings
        return self._s3

    def conditional_writes(self) -> bool:
        """Does this S3 store honour If-None-Match / If-Match? Probed once: a store that
        ignores the header would let two writers both 'win' a create."""
        if self._conditional is None:
            bucket, key = self._bucket_key(f"_probe/{uuid.uuid4().hex}")
            client = self._client()
            supported = False
            try:
                client.put_object(Bucket=bucket, Key=key, Body=b"1", IfNoneMatch="*")
                try:
                    client.put_object(Bucket=bucket, Key=key, Body=b"2", IfNoneMatch="*")
                except Exception as e:  # noqa: BLE001
                    supported = _client_error_code(e) in ("PreconditionFailed", "412")
            except Exception as e:  # noqa: BLE001 - e.g. 501 NotImplemented
                logger.debug("conditional PUT probe failed: %s", e)
            finally:
                with contextlib.suppress(Exception):
                    client.delete_object(Bucket=bucket, Key=key)
            if not supported:
                logger.warning(
                    "%s does not honour conditional writes (If-None-Match): two writers racing for the "
                    "output lease or a manifest version are told apart by a read-back only (best effort)",
                    self.root_uri,
                )
            self._conditional = supported
        return self._conditional

    def _s3_create(self, rel: str, data: bytes) -> bool:
        bucket, key = self._bucket_key(rel)
        client = self._client()
        if not self.conditional_writes():
            if self.exists(rel):
                return False
            client.put_object(Bucket=bucket, Key=key, Body=data)
            got = self.read_tagged(rel)
            return got is not None and got[0] == data  # a racing writer's content: we lost
        try:
            client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except Exception as e:  # noqa: BLE001
            if _client_error_code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise
        return True

    # -- reads ----------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def read_json(self, rel: str, default: Any = None) -> Any:
        try:
            return json.loads(self.read_bytes(rel))
        except FileNotFoundError:
            return default
        except OSError as e:  # pyarrow raises OSError subclasses for missing S3 keys
            if not self.exists(rel):
                return default
            raise e

    def read_parquet(self, rel: str, columns: Optional[list[str]] = None) -> pa.Table:
        with self.fs.open_input_file(self.path(rel)) as f:
            return pq.read_table(f, columns=columns)

    def list(self, rel_dir: str, suffix: str = "") -> Iterator[str]:
        """Relative paths of the files under rel_dir (recursive), skipping temp files."""
        for info in self.list_info(rel_dir):
            if TMP_MARK in posixpath.basename(info.rel):
                continue
            if suffix and not info.rel.endswith(suffix):
                continue
            yield info.rel

    def list_info(self, rel_dir: str, recursive: bool = True) -> Iterator[FileInfo]:
        """Every file under rel_dir, temp files included, with size and modification time."""
        sel = pafs.FileSelector(self.path(rel_dir), allow_not_found=True, recursive=recursive)
        for info in self.fs.get_file_info(sel):
            if info.type != pafs.FileType.File:
                continue
            mtime = info.mtime.timestamp() if info.mtime is not None else time.time()
            yield FileInfo(posixpath.relpath(info.path, self.root), info.size or 0, mtime)

    def list_dirs(self, rel_dir: str) -> list[str]:
        """Names of the folders directly under rel_dir (on S3: the common prefixes)."""
        sel = pafs.FileSelector(self.path(rel_dir), allow_not_found=True, recursive=False)
        return sorted(posixpath.basename(i.path) for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.Directory)

    # -- moves and deletes ----------------------------------------------------------
    def move(self, src_rel: str, dst_rel: str) -> None:
        """Idempotent: a move already done (source gone, destination present) is a no-op.
        On S3 a move is a copy then a delete: killed in between, both exist and the next
        attempt copies again (the same bytes)."""
        src, dst = self.path(src_rel), self.path(dst_rel)
        with self._acting("move a file into", dst_rel):
            if not self.exists(src_rel):
                if self.exists(dst_rel):
                    return
                raise FileNotFoundError(f"neither {src} nor {dst} exists")
            if self.local:
                parent = posixpath.dirname(dst)
                os.makedirs(parent, exist_ok=True)
                os.replace(src, dst)
                _fsync_dir(parent)
            else:
                self.fs.copy_file(src, dst)
                self.fs.delete_file(src)

    def delete(self, rel: str) -> None:
        try:
            self.fs.delete_file(self.path(rel))
        except FileNotFoundError:
            pass

    def delete_dir(self, rel: str) -> None:
        try:
            self.fs.delete_dir(self.path(rel))
        except FileNotFoundError:
            pass


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _json_bytes(obj: Any) -> bytes:
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump(mode="json")
    return json.dumps(obj, indent=1, sort_keys=True).encode()


def _digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _fsync_dir(path: str) -> None:
    """Make a rename or link in `path` durable (POSIX leaves it in the page cache otherwise)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories; nothing more can be done there
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(lock_path: str) -> Iterator[None]:
    """A POSIX record lock (works across processes, and on NFSv4) around a short critical section."""
    import fcntl

    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.lockf(fd, fcntl.LOCK_UN)
        os.close(fd)


def _output_problem(e: OSError) -> Optional[str]:
    """What a person should do about an OSError, or None if it is not theirs to fix."""
    code = e.errno
    text = str(e)
    if code in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text:
        return "no space left on the device (or quota exceeded); free some space or choose another output.path"
    if code in (errno.EACCES, errno.EPERM) or "Permission denied" in text:
        return "permission denied; make the folder writable by this user or choose another output.path"
    if code == errno.EROFS or "Read-only file system" in text:
        return "the file system is read-only; choose another output.path"
    if "ACCESS_DENIED" in text or "AccessDenied" in text:
        return "access denied by the object store; check the credentials (AWS_ACCESS_KEY_ID, ...) and the bucket policy"
    return None


def _client_error_code(e: BaseException) -> Optional[str]:
    resp = getattr(e, "response", None)
    if isinstance(resp, dict):
        err = resp.get("Error") or {}
        code = err.get("Code")
        if code:
            return str(code)
        status = (resp.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        return str(status) if status else None
    return None
