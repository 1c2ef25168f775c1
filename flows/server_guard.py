"""Keeps a local Prefect server from outliving the process that started it.

    python -m flows.server_guard prefect server start --host 127.0.0.1 --port 4200     (stdin: a pipe)

``flows.deployments.start_local_server`` runs this as the leader of a new session (so Ctrl-C in the terminal does not
reach the server directly) with stdin the read end of a pipe whose write end only the serving process holds. The
guard starts the server command in its own process group and blocks on stdin. End of file means the serving process
closed the pipe (a normal stop) or died, even by SIGKILL: the kernel closes a dead process's descriptors. Either way
the guard stops the server's whole group (``prefect server start`` runs uvicorn as a child): SIGTERM, then SIGKILL
after a grace period, and exits once the group is gone. Imports only the standard library.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

GRACE_SECONDS = 20.0


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def stop_group(leader: subprocess.Popen, grace: float = GRACE_SECONDS) -> None:
    """SIGTERM the process group led by ``leader``; SIGKILL whatever is left of it after ``grace`` seconds."""
    try:
        os.killpg(leader.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        leader.poll()  # reap the leader once it exits: a zombie still counts as a member of its group
        if not group_alive(leader.pid):
            return
        time.sleep(0.2)
    if group_alive(leader.pid):
        os.killpg(leader.pid, signal.SIGKILL)


def main(command: list[str]) -> int:
    if not command:
        print("usage: python -m flows.server_guard COMMAND [ARGS...]  (stdin: the pipe to watch)", file=sys.stderr)
        return 2
    server = subprocess.Popen(command, stdin=subprocess.DEVNULL, process_group=0)
    # the serving process may be interrupted with its terminal's group; the guard must outlive that to clean up
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while sys.stdin.buffer.read(4096):  # blocks until every writer has closed the pipe
        pass
    stop_group(server)
    server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
