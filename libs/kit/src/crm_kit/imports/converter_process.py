"""Parsing and converting a big import in a child process, so the service's event loop (which feeds PostgreSQL
the batches) never waits for the interpreter lock held by a converting thread.

    python -m crm_kit.imports.converter_process   # reads one JSON line (the order) on stdin

The order names the file, where to resume, the batch size and the service's converter: "factory" is a
"module:function" that takes "params" (plain values) and returns the batcher's `convert` (rows → Rows).
It writes frames on stdout, each an 8-byte big-endian length and a pickle: ("batch", [Row, ...]) for every
batch, then ("done", data_rows, peak_rss_kib), or ("failed", kind, message) — kind "bad_file" for a file that
cannot be read, else the exception's type. The pipe's buffer is the back-pressure: the child converts at most
one batch ahead of the service.
"""

from __future__ import annotations

import importlib
import json
import pickle
import struct
import sys
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
    from crm_kit.imports import source
    from crm_kit.imports.pipeline import batches, fresh_rows

    order = json.loads(sys.stdin.readline())
    out = sys.stdout.buffer
    try:
        module, function = order["factory"].split(":")
        convert = getattr(importlib.import_module(module), function)(order["params"])
        rows = source.data_rows(order["path"], order["format"], order["encoding"])
        seen = [0]
        for raw in batches(fresh_rows(rows, order["resume_after"], seen), order["batch_rows"]):
            _write(out, ("batch", convert(raw)))
        _write(out, ("done", seen[0], _peak_rss_kib()))
    except source.BadFile as exc:
        _write(out, ("failed", "bad_file", str(exc)))
    except BrokenPipeError:  # the service stopped reading (cancelled, or it stopped)
        return
    except Exception as exc:
        _write(out, ("failed", type(exc).__name__, str(exc)[:500]))


if __name__ == "__main__":
    main()
