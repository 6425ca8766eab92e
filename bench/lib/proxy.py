"""A loopback TCP proxy that can go silent: a stand-in for a network partition without iptables.

    p = Proxy(("127.0.0.1", 2181)); p.start()   # listens on 127.0.0.1:p.port
    ...; p.freeze()   # stop forwarding both ways; every socket stays open, nothing is reset
    ...; p.close()

While frozen, nothing is read from either side, so the client sees its requests go unanswered
(like a silent partition: no RST, no FIN) and the server sees an idle connection and expires the
session. It remembers when it last forwarded bytes each way (time.monotonic_ns(), the same clock
as bench/peers/stamp.c's CLOCK_MONOTONIC), which is how the loss figure finds the last
heartbeat that got through.

Run standalone for manual experiments:  proxy.py LISTEN_PORT TARGET_PORT  (SIGUSR1 toggles)."""
import selectors
import signal
import socket
import sys
import threading
import time


class Proxy:
    def __init__(self, target, listen_port=0):
        self.target = target
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", listen_port))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.pairs = {}  # socket -> (peer socket, direction "c2s" | "s2c")
        self.frozen = False
        self.frozen_at = None
        self.last = {"c2s": None, "s2c": None}  # monotonic ns of the last forwarded chunk
        self.chunks = {"c2s": 0, "s2c": 0}
        self._stop = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self):
        self.sel.register(self.listener, selectors.EVENT_READ)
        self._thread.start()
        return self

    def freeze(self):
        with self._lock:
            self.frozen = True
            self.frozen_at = time.monotonic_ns()
            for s in list(self.pairs):
                try:
                    self.sel.unregister(s)
                except (KeyError, ValueError):
                    pass
        return self.frozen_at

    def thaw(self):
        with self._lock:
            self.frozen = False
            for s in list(self.pairs):
                self.sel.register(s, selectors.EVENT_READ)

    def close(self):
        self._stop = True
        self._thread.join(timeout=2)
        for s in list(self.pairs):
            s.close()
        self.listener.close()
        self.sel.close()

    def _drop(self, s):
        peer, _ = self.pairs.pop(s, (None, None))
        for x in (s, peer):
            if x is None:
                continue
            try:
                self.sel.unregister(x)
            except (KeyError, ValueError):
                pass
            self.pairs.pop(x, None)
            x.close()

    def _loop(self):
        while not self._stop:
            for key, _ in self.sel.select(timeout=0.1):
                with self._lock:
                    s = key.fileobj
                    if s is self.listener:
                        client, _ = s.accept()
                        server = socket.create_connection(self.target)
                        for x in (client, server):
                            x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        self.pairs[client] = (server, "c2s")
                        self.pairs[server] = (client, "s2c")
                        if not self.frozen:
                            self.sel.register(client, selectors.EVENT_READ)
                            self.sel.register(server, selectors.EVENT_READ)
                        continue
                    if self.frozen or s not in self.pairs:
                        continue
                    peer, direction = self.pairs[s]
                    try:
                        data = s.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        self._drop(s)
                        continue
                    peer.sendall(data)
                    self.last[direction] = time.monotonic_ns()
                    self.chunks[direction] += 1


if __name__ == "__main__":
    p = Proxy(("127.0.0.1", int(sys.argv[2])), int(sys.argv[1])).start()
    signal.signal(signal.SIGUSR1, lambda *_: p.thaw() if p.frozen else p.freeze())
    print(f"proxy 127.0.0.1:{p.port} -> {sys.argv[2]}; kill -USR1 {__import__('os').getpid()} toggles", flush=True)
    signal.pause()
