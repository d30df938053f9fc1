"""The writer for an export's file format (the writers themselves are `crm_kit.sheets`)."""

from __future__ import annotations

from crm.customers.v1 import data_quality_pb2 as pb
from crm_kit.sheets import CsvWriter, XlsxWriter


def writer_for(file_format: int) -> CsvWriter | XlsxWriter:
    return XlsxWriter() if file_format == pb.FILE_FORMAT_XLSX else CsvWriter()
