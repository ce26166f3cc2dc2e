"""What the lent GPU machine may return from ``$OUT``: at most 8 files of at most 16 MiB each, none
deeper than ``$OUT/a/file``.  :func:`pack_traces` turns the profiler traces (one file per backend,
each tens of MB) into one compressed archive under the size limit; :func:`check_outputs` says
whether a folder keeps to the limits (the GPU check's ``--cpu-smoke`` fails when it does not).

    python -m fastfm.bench.outputs pack TRACE_DIR ARCHIVE.tar.gz
    python -m fastfm.bench.outputs check OUTDIR
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

MAX_FILES = 8
MAX_BYTES = 16 * 2**20
MAX_DEPTH = 2               # OUT/a/file: a file's path under OUT has at most two parts
# Aim below the limit: the archive's size is only known after compressing.
TARGET_BYTES = MAX_BYTES - 2**20


def _archive(traces: dict[str, bytes], path: Path) -> int:
    with tarfile.open(path, "w:gz", compresslevel=9) as tar:
        for name, data in traces.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path.stat().st_size


def _truncated(data: bytes, keep: float) -> bytes:
    """A Chrome trace with only its first ``keep`` share of events (still valid JSON, so it opens in
    Perfetto), and a note in its metadata saying so."""
    trace = json.loads(data)
    events = trace.get("traceEvents", [])
    kept = events[: max(1, int(len(events) * keep))]
    trace["traceEvents"] = kept
    trace["fastfm_truncated"] = f"first {len(kept)} of {len(events)} events kept (size limit of the GPU machine)"
    return json.dumps(trace).encode()


def pack_traces(trace_dir: str | Path, archive: str | Path, limit: int = TARGET_BYTES) -> list[str]:
    """Every ``*.json`` under ``trace_dir`` into one ``.tar.gz`` at ``archive``, kept under ``limit``
    bytes: when the whole traces do not fit, each is cut to its first events (halving until it fits).
    Returns what was done, one line each (the GPU check logs them)."""
    trace_dir, archive = Path(trace_dir), Path(archive)
    traces = {p.name: p.read_bytes() for p in sorted(trace_dir.glob("*.json"))}
    if not traces:
        return [f"no traces under {trace_dir}"]
    size = _archive(traces, archive)
    notes = [f"{archive.name}: {len(traces)} trace(s), {size / 2**20:.1f} MiB compressed"]
    keep = 1.0
    while size > limit and keep > 1e-3:
        keep /= 2
        size = _archive({n: _truncated(d, keep) for n, d in traces.items()}, archive)
        notes.append(f"over {limit / 2**20:.0f} MiB: traces cut to their first {keep:.1%} of events, "
                     f"{size / 2**20:.1f} MiB")
    if size > limit:
        raise RuntimeError(f"{archive}: {size} bytes even with the traces cut; nothing usable fits")
    return notes


def check_outputs(out: str | Path, max_files: int = MAX_FILES, max_bytes: int = MAX_BYTES,
                  max_depth: int = MAX_DEPTH) -> list[str]:
    """The problems that would keep ``out``'s files from coming back (too many, too big, too deep);
    an empty list when there are none."""
    out = Path(out)
    files = sorted(p for p in out.rglob("*") if p.is_file() or p.is_symlink())
    problems = []
    if len(files) > max_files:
        problems.append(f"{len(files)} files, at most {max_files} come back: "
                        + ", ".join(str(p.relative_to(out)) for p in files))
    for p in files:
        rel = p.relative_to(out)
        if p.is_symlink():
            problems.append(f"{rel}: a link (links do not come back)")
        elif p.stat().st_size > max_bytes:
            problems.append(f"{rel}: {p.stat().st_size} bytes, over {max_bytes}")
        if len(rel.parts) > max_depth:
            problems.append(f"{rel}: deeper than OUT/a/file")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "pack":
        for line in pack_traces(argv[1], argv[2]):
            print(line)
        return 0
    if len(argv) == 2 and argv[0] == "check":
        problems = check_outputs(argv[1])
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        if not problems:
            print(f"{argv[1]}: {len(list(Path(argv[1]).rglob('*')))} entries, within the GPU machine's limits "
                  f"({MAX_FILES} files, {MAX_BYTES // 2**20} MiB each, OUT/a/file)")
        return 1 if problems else 0
    print("usage:\n" + "\n".join(__doc__.strip().splitlines()[-2:]), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
