#!/usr/bin/python3
"""The kazoo peer: run a command under kazoo's Lock recipe, the way a user would script it.

    kazoo_lock.py [-z HOSTS] [--session-timeout S] LOCK -- COMMAND...

Connect, Lock(LOCK).acquire(), run the command (subprocess), release, stop. Exits with the
command's status. Uses Debian's python3-kazoo, so run it with /usr/bin/python3."""
import argparse
import socket
import subprocess
import sys

from kazoo.client import KazooClient


def main():
    argv = sys.argv[1:]
    if "--" not in argv:
        sys.exit("usage: kazoo_lock.py [-z HOSTS] [--session-timeout S] LOCK -- COMMAND...")
    split = argv.index("--")
    p = argparse.ArgumentParser(prog="kazoo_lock.py")
    p.add_argument("-z", "--zk", default="127.0.0.1:2181")
    p.add_argument("--session-timeout", type=float, default=10.0)
    p.add_argument("lock")
    args = p.parse_args(argv[:split])
    command = argv[split + 1:]

    zk = KazooClient(hosts=args.zk, timeout=args.session_timeout)
    zk.start(timeout=10)
    lock = zk.Lock(args.lock, identifier=socket.gethostname())
    lock.acquire()
    try:
        status = subprocess.call(command)
    finally:
        lock.release()
        zk.stop()
        zk.close()
    sys.exit(status if status >= 0 else 128 - status)


if __name__ == "__main__":
    main()
