"""The live view: `memtrace run --live` and `memtrace live PID|SOCKET` (docs/live.md).

server.py  the collector's numbers, served on a socket in its session directory
client.py  a view's side: fetching them, naming lines with the model's own code
app.py     the terminal view (Textual)
"""
