"""memtrace in Jupyter (docs/jupyter.md): a kernel that runs under memtrace
(kernelspec.py) and the IPython magics %%memtrace and %memtrace_report (magics.py)."""
