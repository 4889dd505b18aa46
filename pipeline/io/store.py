"""A tiny object-store view of the output folder (local path or s3://), with atomic writes.

Every write is all-or-nothing: locally a temp file renamed into place, on S3 a single PUT
(an object appears only when complete). That is what makes commit records and the
manifest safe to read at any moment, and what a crash mid-write can never break.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import uuid
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


class Store:
    def __init__(self, root: str):
        self.root_uri = root
        if "://" in root and not root.startswith("file://"):
            self.fs, path = pafs.FileSystem.from_uri(root)
            self.local = False
        else:
            path = os.path.abspath(root.removeprefix("file://"))
            self.fs = pafs.LocalFileSystem()
            self.local = True
        self.root = path.rstrip("/")

    def __reduce__(self):  # ship by URI: filesystems re-resolve credentials where they land
        return (Store, (self.root_uri,))

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel) if rel else self.root

    def uri(self, rel: str) -> str:
        if self.local:
            return self.path(rel)
        return self.root_uri.rstrip("/") + "/" + rel

    # -- writes (atomic) ------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> None:
        dest = self.path(rel)
        parent = posixpath.dirname(dest)
        if self.local:
            os.makedirs(parent, exist_ok=True)
            tmp = f"{dest}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        else:
            with self.fs.open_output_stream(dest) as f:
                f.write(data)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=1, sort_keys=True).encode())

    def write_parquet(self, rel: str, table: pa.Table) -> int:
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        data = buf.getvalue()
        self.write_bytes(rel, data)
        return len(data)

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

    def list(self, rel_dir: str, suffix: str = "") -> Iterator[str]:
        """Relative paths of the files under rel_dir (recursive), skipping temp files."""
        sel = pafs.FileSelector(self.path(rel_dir), allow_not_found=True, recursive=True)
        for info in self.fs.get_file_info(sel):
            if info.type != pafs.FileType.File or ".tmp-" in info.base_name:
                continue
            if suffix and not info.path.endswith(suffix):
                continue
            yield posixpath.relpath(info.path, self.root)

    # -- moves and deletes ----------------------------------------------------------
    def move(self, src_rel: str, dst_rel: str) -> None:
        """Idempotent: a move already done (source gone, destination present) is a no-op."""
        src, dst = self.path(src_rel), self.path(dst_rel)
        if not self.exists(src_rel):
            if self.exists(dst_rel):
                return
            raise FileNotFoundError(f"neither {src} nor {dst} exists")
        if self.local:
            os.makedirs(posixpath.dirname(dst), exist_ok=True)
            os.replace(src, dst)
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
