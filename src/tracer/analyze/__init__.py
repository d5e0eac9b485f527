"""The read side: from a capture file to the model every report reads.

`capture` reads the chunks (any truncated capture up to its last whole chunk),
`model` builds processes, sites, stacks and timelines from them, `stacks` turns
the interned stack trie into arrays, `reconcile` explains RSS in rows that add
up, `regions` views the model through one region. Reports (`tracer.reports`)
and the command line (`tracer.cli`) only read what is built here.
"""
