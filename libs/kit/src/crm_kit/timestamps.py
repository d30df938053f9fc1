"""Datetimes to protobuf Timestamps, once for every service.

`Timestamp.FromDatetime` goes through `calendar.timegm` and costs a few microseconds per call; a list page
converts three timestamps per row, so the arithmetic is done here directly."""

from __future__ import annotations

import datetime as dt

from google.protobuf import timestamp_pb2

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_NAIVE = dt.datetime(1970, 1, 1)


def ts(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    """`value` as a Timestamp (naive datetimes are taken as UTC); None stays None (the field stays unset)."""
    if value is None:
        return None
    delta = value - (_EPOCH if value.tzinfo is not None else _EPOCH_NAIVE)
    return timestamp_pb2.Timestamp(
        seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1_000
    )
