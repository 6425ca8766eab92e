"""A kazoo peer for the interoperability tests: run a command under kazoo's Lock, ReadLock or
WriteLock, as a Python service would.

    /usr/bin/python3 kazoo_lock.py ZK lock|read|write LOCK PATTERNS -- COMMAND...

PATTERNS is a comma-separated list of extra_lock_patterns (the other recipes' node names kazoo
must queue behind), or "-" for none. Exits with the command's status.
"""
import subprocess
import sys

from kazoo.client import KazooClient
from kazoo.recipe.lock import Lock, ReadLock, WriteLock


def main(argv):
    zk, mode, path, patterns, sep = argv[:5]
    if sep != "--" or len(argv) < 6:
        print(__doc__, file=sys.stderr)
        return 2
    extra = () if patterns == "-" else tuple(patterns.split(","))
    client = KazooClient(hosts=zk, timeout=10.0)
    client.start(timeout=10)
    try:
        kind = {"lock": Lock, "read": ReadLock, "write": WriteLock}[mode]
        lock = kind(client, path, extra_lock_patterns=extra)
        with lock:
            return subprocess.call(argv[5:])
    finally:
        client.stop()
        client.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
