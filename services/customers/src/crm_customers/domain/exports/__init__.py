"""Exports of any filtered list of accounts or contacts to CSV or XLSX, streamed, without hidden fields."""
