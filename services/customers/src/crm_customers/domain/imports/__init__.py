"""Imports of accounts, contacts and relationships from CSV and XLSX: upload, dry run, background job with
progress and checkpoint, error report."""
