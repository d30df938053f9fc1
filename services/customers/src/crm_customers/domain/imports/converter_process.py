"""Parsing and converting a big import in a child process, so the service's event loop (which feeds PostgreSQL
the batches) never waits for the interpreter lock held by a converting thread.

    python -m crm_customers.domain.imports.converter_process   # reads one JSON line (the job) on stdin

It writes frames on stdout, each an 8-byte big-endian length and a pickle: ("batch", [Row, ...]) for every
batch, then ("done", data_rows, peak_rss_kib), or ("failed", kind, message) — kind "bad_file" for a file that
cannot be read, else the exception's type. The pipe's buffer is the back-pressure: the child converts at most
one batch ahead of the service.
"""

from __future__ import annotations

import json
import pickle
import struct
import sys
from types import SimpleNamespace
from typing import Any

FRAME = struct.Struct(">Q")


def _peak_rss_kib() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _write(out: Any, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(FRAME.pack(len(data)))
    out.write(data)
    out.flush()


def main() -> None:
    from crm_customers.domain.imports import source
    from crm_customers.domain.imports.convert import Converter
    from crm_customers.domain.imports.pipeline import batches, convert_rows

    spec = json.loads(sys.stdin.readline())
    out = sys.stdout.buffer
    try:
        defs = {k: SimpleNamespace(**v) for k, v in spec["defs"].items()}
        converter = Converter(
            target=spec["target"],
            columns=spec["columns"],
            mapping=[tuple(m) for m in spec["mapping"]],
            defs=defs,
            tenant_id=spec["tenant_id"],
            owner_id=spec["owner_id"],
            department_id=spec["department_id"],
            created_by=spec["created_by"],
        )
        record_columns = tuple(spec["record_columns"])
        rows = source.data_rows(spec["path"], spec["format"], spec["encoding"])
        index = 0
        resume_after = spec["resume_after"]

        def fresh() -> Any:
            nonlocal index
            for item in rows:
                index += 1
                if index > resume_after:
                    yield item

        for raw in batches(fresh(), spec["batch_rows"]):
            _write(out, ("batch", convert_rows(converter, record_columns, raw)))
        _write(out, ("done", index, _peak_rss_kib()))
    except source.BadFile as exc:
        _write(out, ("failed", "bad_file", str(exc)))
    except BrokenPipeError:  # the service stopped reading (cancelled, or it stopped)
        return
    except Exception as exc:
        _write(out, ("failed", type(exc).__name__, str(exc)[:500]))


if __name__ == "__main__":
    main()
