"""`python -m bench.readers`: how fast `read_units` turns files into rows, per format.

    python -m bench.readers                   # 200,000 short rows per file, best of 3
    python -m bench.readers --rows 1000000 --repeat 5

Writes one file per (format, compression) into a temporary folder (short documents, an id
column, so the per-row cost of the reader shows rather than the disk), reads each with
`read_units` in this process (one core, as one Ray read task does) and prints rows/s and
input MB/s. The target: above 50,000 rows/s on short JSONL lines on one core, so that reading
never bounds a run (the engine does hundreds of rows/s per core at best). Figures depend on
the machine: compare them run against run on one machine, not against the target alone.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

FORMATS = ("jsonl", "csv", "text", "parquet")
COMPRESSIONS = {"none": "", "gzip": ".gz"}


def _texts(n: int) -> list[str]:
    return [f"a short line of text number {i}, with a comma and \"quotes\"" for i in range(n)]


def write_file(folder: Path, fmt: str, compression: str, rows: int) -> Path:
    texts = _texts(rows)
    if fmt == "jsonl":
        data = "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)).encode()
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["id", "text"])
        w.writerows(enumerate(texts))
        data = buf.getvalue().encode()
    elif fmt == "text":
        data = "".join(t + "\n" for t in texts).encode()
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = io.BytesIO()
        pq.write_table(pa.table({"id": list(range(rows)), "text": texts}), sink, row_group_size=65536)
        data = sink.getvalue()
    else:
        raise ValueError(fmt)
    ext = {"jsonl": ".jsonl", "csv": ".csv", "text": ".txt", "parquet": ".parquet"}[fmt] + COMPRESSIONS[compression]
    path = folder / f"bench-{fmt}{ext}"
    path.write_bytes(gzip.compress(data, compresslevel=6) if compression == "gzip" else data)
    return path


def measure(folder: Path, rows: int, repeat: int = 3, rows_per_unit: int = 1000) -> list[dict[str, Any]]:
    """One figure per (format, compression): the best of `repeat` full reads."""
    from pipeline.config import InputConfig
    from pipeline.io.readers import read_units
    from pipeline.io.sources import list_sources

    out = []
    for fmt in FORMATS:
        for compression in COMPRESSIONS:
            path = write_file(folder, fmt, compression, rows)
            cfg = InputConfig(paths=[str(path)], id_field=None if fmt == "text" else "id")
            (src,) = list_sources(cfg)
            best, count, errors = float("inf"), 0, 0
            for _ in range(repeat):
                t0 = time.perf_counter()
                count = errors = 0
                for t in read_units(src, cfg, rows_per_unit):
                    count += t.num_rows
                    errors += t.num_rows - t.column("error_kind").null_count
                best = min(best, time.perf_counter() - t0)
            out.append({
                "format": fmt, "compression": compression, "rows": count, "error_rows": errors,
                "bytes": src.size, "seconds": round(best, 4),
                "rows_per_second": round(count / best) if best > 0 else None,
                "mb_per_second": round(src.size / best / 1e6, 1) if best > 0 else None,
            })
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.readers", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200_000, help="rows per file")
    ap.add_argument("--repeat", type=int, default=3, help="reads per file; the best counts")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-readers-") as tmp:
        figures = measure(Path(tmp), args.rows, args.repeat)
    print(f"read_units, {args.rows:,} rows per file, best of {args.repeat}, one process "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
    print(f"{'format':<8} {'compression':<11} {'rows/s':>10} {'MB/s':>7} {'seconds':>8}")
    for f in figures:
        print(f"{f['format']:<8} {f['compression']:<11} {f['rows_per_second']:>10,} {f['mb_per_second']:>7} {f['seconds']:>8}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
