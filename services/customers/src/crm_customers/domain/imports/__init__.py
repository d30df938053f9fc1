"""Imports of accounts, contacts and relationships from CSV and XLSX, on the kit's import machinery
(`crm_kit.imports`: upload, mapping, dry run, job with progress and checkpoint, error report). What is
customers' own: the header words of each field (`mapping`), what a row means (`convert`), the duplicate rules
and the COPY of accounts and contacts (`pipeline`), relationships between existing records (`relationships`),
and the importers that tie them to the kit (`importers`)."""
