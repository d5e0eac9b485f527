"""reaper.py STATUS_FILE -- PROGRAM [ARGS...]

Becomes a child subreaper (prctl PR_SET_CHILD_SUBREAPER), starts PROGRAM and reaps
every descendant that ends, including ones orphaned when their parent (the memtrace
collector) is killed. Each reaped process is appended to STATUS_FILE as one JSON line
{"pid", "exit_code", "signal"}; the first line is {"spawned": PID}. Exits when it has
no child left.
"""

import ctypes
import json
import os
import sys

PR_SET_CHILD_SUBREAPER = 36


def main():
    status_file = sys.argv[1]
    argv = sys.argv[3:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit("reaper: prctl(PR_SET_CHILD_SUBREAPER) failed")
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    with open(status_file, "a") as out:
        out.write(json.dumps({"spawned": pid}) + "\n")
        out.flush()
        while True:
            try:
                child, status = os.wait()
            except ChildProcessError:
                break
            rec = {
                "pid": child,
                "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            }
            out.write(json.dumps(rec) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
