"""The write side: what runs while a program is traced.

`launcher` starts the target under the shim inside a private `session`; the
`collector` accepts each traced process, drains its shared-memory stream in
batches into the C `aggregate`or, answers its questions (`answers`, `census`),
reads `/proc` (`procfs`) for the heap-level snapshots and writes the capture
(`capture_writer`). Nothing here imports NumPy: the target waits for the
collector at start-up, so the collector must be ready fast.
"""
