"""Imports from CSV and XLSX files, the same for every service: upload, suggested column mapping, dry run,
background job with progress, lease and resume, and an error report (row, column, value, reason).

What is the kit's:

| module | what |
|---|---|
| `models`, `schema` | the tables (`import_jobs`, `import_file_chunks`, `import_errors`) and their migration helper |
| `source` | the stored file: chunks in PostgreSQL, spooled to disk, read row by row (CSV in UTF-8/GB18030, XLSX) |
| `mapping` | `Vocabulary`: header → field suggestion from zh-CN/en words, and the check of a chosen mapping |
| `jobs` | upload, start, cancel, progress, the starter's scope (`may_change`), the job as a message |
| `pipeline` | batches in one transaction each with the checkpoint, row-by-row retry, thread or child-process conversion, dry run |
| `worker` | claims jobs with a lease, renews it, resumes a crashed job from its checkpoint, fails it after 3 claims |
| `report` | the error report: paged, or streamed as CSV / XLSX |
| `rpc` | `ImportRpcs`: the eight RPCs (upload … download errors) behind any service's servicer |

What a service writes (`importer`): an `Importer` per kind of record — its `Vocabulary`, its permission
object, its custom fields, the options a person chooses (`prepare`) — and the `Batcher` it makes for a run:
`convert` (pure: a row → values and per-cell errors), `check` (references and duplicate rules, no writes),
`write` (creates and updates in the batch's transaction, with their events), `finish`.

A service that imports: its migration calls `crm_kit.imports.schema.create_tables(op)`, it starts a
`worker.Worker(db, importers)` and stops it on shutdown, and its servicer delegates to `rpc.ImportRpcs`.
"""
