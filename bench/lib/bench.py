"""The benchmark harness (run by bench/run, with Debian's /usr/bin/python3 for python3-kazoo).

Measures zklock and its peers on the servers bench/run started, interleaved (A B C ... A B C)
in one run, and writes results.json and summary.md into --out. See bench/README.md for what
each figure means."""
import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proxy import Proxy  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
CLK_TCK = os.sysconf("SC_CLK_TCK")

# ---------------------------------------------------------------------------------------------
# small helpers


def now():
    return time.monotonic_ns()


def ms(ns):
    return ns / 1e6


def pct(xs, p):
    """Nearest-rank percentile; with fewer than 100 samples p99 is the maximum."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))]


def stats_ms(xs_ns):
    xs = [ms(x) for x in xs_ns]
    if not xs:
        return {"n": 0}
    return {
        "n": len(xs),
        "median": statistics.median(xs),
        "p99": pct(xs, 99),
        "mean": statistics.fmean(xs),
        "min": min(xs),
        "max": max(xs),
    }


def fmt(x, digits=1):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def log(*a):
    print(*a, flush=True)


def table(headers, rows):
    """A GitHub markdown table, also readable on a terminal."""
    cols = list(zip(*([headers] + [[str(c) for c in r] for r in rows]))) if rows else [[h] for h in headers]
    widths = [max(len(c) for c in col) for col in cols]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# processes: every wrapper is spawned in its own process group and killed by that group at exit

LIVE = {}  # pid -> argv


def spawn(argv, stdout=None, stderr=None, env=None):
    path = argv[0] if "/" in argv[0] else shutil.which(argv[0])
    acts = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, stdout or "/dev/null", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644),
        (os.POSIX_SPAWN_OPEN, 2, stderr or "/dev/null", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644),
    ]
    pid = os.posix_spawn(path, argv, env or os.environ, file_actions=acts, setpgroup=0)
    LIVE[pid] = argv
    return pid


def reap(pid, block=True):
    """(status, rusage) or None if still running."""
    try:
        p, status, ru = os.wait4(pid, 0 if block else os.WNOHANG)
    except ChildProcessError:
        LIVE.pop(pid, None)
        return (0, None)
    if p == 0:
        return None
    LIVE.pop(pid, None)
    return (os.waitstatus_to_exitcode(status), ru)


def wait_all(pids, deadline):
    """Waits for every pid until the monotonic deadline (ns); returns {pid: exit code}."""
    codes = {}
    pending = set(pids)
    while pending and now() < deadline:
        for pid in list(pending):
            r = reap(pid, block=False)
            if r is not None:
                codes[pid] = r[0]
                pending.discard(pid)
        if pending:
            time.sleep(0.005)
    return codes, pending


def kill_group(pid, sig=signal.SIGKILL):
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        pass


def kill_stamped(path):
    """Kills the commands that stamped into path and may outlive their wrapper."""
    for ev in read_stamps(path):
        try:
            os.kill(ev["pid"], signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def cleanup_all():
    for pid in list(LIVE):
        kill_group(pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in list(LIVE):
        reap(pid, block=True)


def read_stamps(path):
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 5:
                continue
            out.append({"t": int(parts[0]), "kind": parts[1], "id": parts[2], "pid": int(parts[3]),
                        "node": parts[4], "extra": parts[5] if len(parts) > 5 else None})
    out.sort(key=lambda e: e["t"])
    return out


def open_gate(gate):
    """Lets the gate holder's command end (it is blocked reading the FIFO)."""
    try:
        fd = os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return False  # nobody reads it: the holder never started
    os.write(fd, b"x")
    os.close(fd)
    return True


def wait_for(pred, timeout_s, step=0.01):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


# ---------------------------------------------------------------------------------------------
# /proc


def proc_status(pid):
    d = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                d[k] = v.strip()
    except OSError:
        return None
    return d


def kib(v):
    return int(v.split()[0]) if v else 0


def proc_cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14 and 15)


def proc_cpu_ns(pid):
    """{tid: sum_exec_runtime in ns} for each live thread (nanosecond resolution)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out[tid] = int(f.read().split()[0])
        except OSError:
            pass
    return out


def cpu_ns_delta(before, after):
    """Run time between two proc_cpu_ns snapshots: threads born in between count from zero;
    the time of threads that exited in between is lost (utime+stime still has it)."""
    return sum(v - before.get(tid, 0) for tid, v in after.items())


def proc_pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid):
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


# ---------------------------------------------------------------------------------------------
# servers


class ZK:
    def __init__(self, hostport):
        from kazoo.client import KazooClient

        self.hostport = hostport
        self.host, port = hostport.split(":")
        self.port = int(port)
        self.client = KazooClient(hosts=hostport, timeout=30)
        self.client.start(timeout=30)

    def four(self, word):
        with socket.create_connection((self.host, self.port), timeout=5) as s:
            s.sendall(word.encode())
            chunks = []
            while True:
                b = s.recv(65536)
                if not b:
                    break
                chunks.append(b)
        return b"".join(chunks).decode()

    def mntr(self):
        d = {}
        for line in self.four("mntr").splitlines():
            k, _, v = line.partition("\t")
            try:
                d[k] = float(v)
            except ValueError:
                d[k] = v
        return d

    def watches_triggered(self):
        m = self.mntr()
        kinds = ["created", "deleted", "changed", "children"]
        return {k: m.get(f"zk_sum_node_{k}_watch_count", 0) for k in kinds}

    def total_watches(self):
        m = re.search(r"Total watches:(\d+)", self.four("wchs"))
        return int(m.group(1)) if m else None

    def children(self, path):
        try:
            return self.client.get_children(path)
        except Exception:
            return []

    def rmr(self, path):
        try:
            self.client.delete(path, recursive=True)
        except Exception:
            pass

    def stop(self):
        self.client.stop()
        self.client.close()


class Etcd:
    def __init__(self, hostport):
        self.hostport = hostport

    def count(self, prefix):
        r = subprocess.run(["etcdctl", f"--endpoints={self.hostport}", "get", "--prefix", "--keys-only", prefix + "/"],
                           capture_output=True, text=True, env=dict(os.environ, ETCDCTL_API="3"))
        return len([x for x in r.stdout.splitlines() if x.strip()])

    def events_sent(self):
        try:
            text = urllib.request.urlopen(f"http://{self.hostport}/metrics", timeout=5).read().decode()
        except OSError:
            return None
        m = re.search(r"^etcd_debugging_mvcc_events_total (\S+)$", text, re.M)
        return float(m.group(1)) if m else None

    def delete_prefix(self, prefix):
        subprocess.run(["etcdctl", f"--endpoints={self.hostport}", "del", "--prefix", prefix],
                       capture_output=True, env=dict(os.environ, ETCDCTL_API="3"))


def blocked_flocks():
    try:
        with open("/proc/locks") as f:
            return sum(1 for line in f if "->" in line and "FLOCK" in line)
    except OSError:
        return 0


# ---------------------------------------------------------------------------------------------
# the tools: zklock and its peers, each turned into argv for "<wrapper> LOCK -- COMMAND..."


class Tool:
    def __init__(self, name, kind, make, note):
        self.name, self.kind, self._make, self.note = name, kind, make, note
        self.is_zklock = name == "zklock" or name.startswith("zklock-")

    def argv(self, lock, cmd, endpoint=None, extra=()):
        return self._make(lock, cmd, endpoint, list(extra))


def make_tools(a):
    flock_dir = os.path.join(a.work, "flock")
    os.makedirs(flock_dir, exist_ok=True)
    java_cp = a.java_cp
    tick = f"{a.tick_ms}ms"
    tools = {
        "flock": Tool("flock", "flock",
                      lambda lock, cmd, ep, x: ["flock", os.path.join(flock_dir, lock.strip("/").replace("/", "_"))] + cmd,
                      "flock(1) on a file in a temp dir: the local floor"),
        "etcdctl": Tool("etcdctl", "etcd",
                        lambda lock, cmd, ep, x: ["etcdctl", f"--endpoints={ep or a.etcd}", "lock", "--ttl=10"] + x + [lock, "--"] + cmd,
                        "etcdctl lock --ttl=10 NAME CMD against the local etcd"),
        "kazoo": Tool("kazoo", "zk",
                      lambda lock, cmd, ep, x: ["/usr/bin/python3", os.path.join(BENCH, "peers", "kazoo_lock.py"),
                                                "-z", ep or a.zk, "--session-timeout", "10"] + x + [lock, "--"] + cmd,
                      "bench/peers/kazoo_lock.py (python3-kazoo Lock), session timeout 10 s"),
        "curator": Tool("curator", "zk",
                        lambda lock, cmd, ep, x: ["java"] + a.jvm_flags.split() + ["-cp", java_cp, "CuratorLock", "-z", ep or a.zk,
                                                  "--session-timeout", "10000"] + x + [lock, "--"] + cmd,
                        f"bench/peers/CuratorLock.java (InterProcessMutex), java {a.jvm_flags}, session timeout 10 s"),
        "floor": Tool("floor", "zk",
                      lambda lock, cmd, ep, x: [a.floor, ep or a.zk, lock],
                      "bench/floor.rs: zklock's requests for one cycle (session, create + listing, delete + close) "
                      "with the same crate and runtime, and nothing else; it runs no command"),
        "zklock": Tool("zklock", "zk",
                       lambda lock, cmd, ep, x: [a.zklock, "run", "-z", ep or a.zk, "--server-tick", tick] + x + [lock, "--"] + cmd,
                       f"zklock run --server-tick {tick} (session timeout 10 s, its default)"),
    }
    for spec in a.variant:
        # --variant NAME=PATH: another zklock build measured alongside, as tool zklock-NAME
        name, _, path = spec.partition("=")
        tools[f"zklock-{name}"] = Tool(
            f"zklock-{name}", "zk",
            lambda lock, cmd, ep, x, path=path: [path, "run", "-z", ep or a.zk, "--server-tick", tick] + x + [lock, "--"] + cmd,
            f"{path} (a zklock variant), same options as zklock")
        if f"zklock-{name}" not in a.tools:
            a.tools.append(f"zklock-{name}")
    return [tools[n] for n in a.tools if n in tools]


# ---------------------------------------------------------------------------------------------
# warm-up: ZooKeeper is a JVM; its first few thousand requests run before the JIT compiled them


def warm_up(a, tools, zk):
    log("\nwarming up the servers (not measured): 2000 ZooKeeper requests, 20 cycles of each zklock build")
    c = zk.client
    c.ensure_path("/bench/warm")
    for i in range(400):
        p = c.create("/bench/warm/n-", b"x", ephemeral=True, sequence=True)
        c.get_children("/bench/warm")
        c.exists(p, watch=lambda ev: None)
        c.set(p, b"y")
        c.delete(p)
    zk.rmr("/bench/warm")
    for t in tools:
        if t.is_zklock:
            for _ in range(20):
                run_once(t.argv("/bench/warm", ["true"]))


# ---------------------------------------------------------------------------------------------
# figure 1: the uncontended cycle


def run_once(argv, stderr=None):
    t0 = now()
    pid = spawn(argv, stderr=stderr)
    code, ru = reap(pid)
    t1 = now()
    cpu = (ru.ru_utime + ru.ru_stime) * 1e3 if ru else float("nan")
    return t1 - t0, code, cpu, (ru.ru_maxrss if ru else 0)


def fig_cycle(a, tools, zk, etcd, res):
    log(f"\n== 1. uncontended cycle: <wrapper> /locks/bench -- true, {a.cycles} rounds interleaved "
        f"(+{a.warmup} warm-up) ==")
    zk.rmr("/locks")
    etcd.delete_prefix("/locks")
    samples = {t.name: [] for t in tools}
    cpu = {t.name: [] for t in tools}
    rss = {t.name: [] for t in tools}
    failures = {t.name: 0 for t in tools}
    errlog = os.path.join(a.out, "logs", "cycle.log")
    for i in range(a.warmup + a.cycles):
        k = i % len(tools)
        for t in tools[k:] + tools[:k]:
            wall, code, c, r = run_once(t.argv("/locks/bench", ["true"]), stderr=errlog)
            if code != 0:
                failures[t.name] += 1
            if i >= a.warmup:
                samples[t.name].append(wall)
                cpu[t.name].append(c)
                rss[t.name].append(r)
    out = {}
    for t in tools:
        out[t.name] = dict(stats_ms(samples[t.name]), cpu_ms_median=statistics.median(cpu[t.name]),
                           failures=failures[t.name])
    base = out.get("flock", {}).get("median")
    base_cpu = out.get("flock", {}).get("cpu_ms_median")
    zkl = out.get("zklock", {}).get("median")
    floor = out.get("floor", {}).get("median")
    rows = []
    for t in tools:
        o = out[t.name]
        rows.append([t.name, fmt(o["median"], 2), fmt(o["p99"], 2), fmt(o["cpu_ms_median"], 1),
                     fmt(o["cpu_ms_median"] / base_cpu, 2) + "x" if base_cpu else "-",
                     fmt(o["median"] / base, 2) + "x" if base else "-",
                     fmt(o["median"] / floor, 2) + "x" if floor else "-",
                     fmt(o["median"] / zkl, 2) + "x" if zkl else "-", o["failures"]])
    txt = table(["tool", "median ms", "p99 ms", "CPU ms", "CPU vs flock", "vs flock", "vs floor", "vs zklock", "failed"],
                rows)
    log(txt)
    res["cycle"] = out
    res["md"].append("### 1. Uncontended cycle\n\n`<wrapper> /locks/bench -- true` against idle local servers, "
                     f"{a.cycles} rounds interleaved after {a.warmup} warm-up rounds; whole-process wall time "
                     "(spawn to reap); CPU = user+sys of the wrapper and its children (wait4 rusage).\n\n"
                     + txt + "\n")


# zookeeper request types (OpCode) seen in zklock's writes, for the phase breakdown
OPCODES = {1: "create", 2: "delete", 3: "exists", 4: "getData", 5: "setData", 8: "getChildren", 9: "sync",
           11: "ping", 12: "getChildren2", 13: "check", 14: "multi", 15: "create2", 18: "removeWatches",
           19: "createContainer", 101: "multiRead", -11: "closeSession"}


def parse_strace(path, root):
    """Phases of one zklock cycle from `strace -f -ttt -xx` output. zklock forks more than once
    (the command, and since the guard process, a guard): the command is the fork that execs."""
    ev = {"writes": []}
    clones = {}  # child pid -> time of the clone
    execs, exits = {}, {}
    unfinished = {}
    with open(path) as f:
        for line in f:
            m = re.match(r"(\d+) +(\d+\.\d+) (.*)$", line.rstrip("\n"))
            if not m:
                continue
            pid, t, rest = int(m.group(1)), float(m.group(2)), m.group(3)
            if rest.endswith("<unfinished ...>"):
                unfinished[pid] = (t, rest)
                continue
            if rest.startswith("<... "):
                t0, first = unfinished.pop(pid, (t, ""))
                rest = first.replace("<unfinished ...>", "") + rest.split("resumed>", 1)[-1]
                t = t0
            if pid == root:
                if rest.startswith("execve(") and "t_exec" not in ev:
                    ev["t_exec"] = t
                elif rest.startswith("connect(") and "AF_INET" in rest and "t_connect" not in ev:
                    ev["t_connect"] = t
                elif rest.startswith("writev("):
                    hx = re.search(r'iov_base="((?:\\x[0-9a-f]{2})+)', rest)
                    b = bytes.fromhex(hx.group(1).replace("\\x", "")) if hx else b""
                    if not ev["writes"]:
                        op = "connect"
                    elif len(b) >= 12:
                        op = OPCODES.get(int.from_bytes(b[8:12], "big", signed=True), "op?")
                    else:
                        op = "?"
                    ev["writes"].append((t, op))
                elif (rest.startswith("clone(") or rest.startswith("clone3(")) and "CLONE_THREAD" not in rest:
                    mm = re.search(r"= (\d+)\s*$", rest)
                    if mm:
                        clones[int(mm.group(1))] = t
                elif rest.startswith("exit_group("):
                    ev["t_exit"] = t
            else:
                if rest.startswith("execve(") and re.search(r"= 0\s*$", rest):
                    execs.setdefault(pid, t)
                elif rest.startswith("exit_group("):
                    exits[pid] = t
    cmd = next((p for p in clones if p in execs), None)
    w = ev["writes"]
    first = lambda name: next((t for t, op in w if op == name), None)  # noqa: E731
    t_create = first("create2") or first("create")
    t_close = first("closeSession")
    need = [ev.get("t_exec"), ev.get("t_connect"), t_create, clones.get(cmd), execs.get(cmd), exits.get(cmd),
            t_close, ev.get("t_exit")]
    if any(x is None for x in need):
        return None
    t_exec, t_conn, _, t_clone, t_cmd, t_cmd_exit, _, t_exit = need
    return {
        "process start (exec to TCP connect)": t_conn - t_exec,
        "connect (TCP, session, ping, node data)": t_create - t_conn,
        "acquire (create, getChildren)": t_clone - t_create,
        "spawn (fork to command exec'd)": t_cmd - t_clone,
        "command (`true` runs)": t_cmd_exit - t_cmd,
        "release (reap, delete)": t_close - t_cmd_exit,
        "close (closeSession reply, exit)": t_exit - t_close,
        "total (exec to exit_group)": t_exit - t_exec,
        "_requests": [op for _, op in w],
        "_forks": len(clones),
    }


def fig_phases(a, tools, zk, res):
    for z in tools:
        if z.is_zklock:
            fig_phases_one(a, z, zk, res)


def fig_phases_one(a, z, zk, res):
    log(f"\n== 1b. {z.name}'s phases: {a.phase_runs} cycles under strace --seccomp-bpf, and its -vv timers ==")
    tmp = os.path.join(a.work, "strace-" + z.name)
    os.makedirs(tmp, exist_ok=True)
    phases = []
    requests = None
    forks = None
    for i in range(a.phase_runs + 2):
        path = os.path.join(tmp, f"cycle{i}.txt")
        argv = ["strace", "--seccomp-bpf", "-f", "-ttt", "-xx", "-s", "16", "-o", path,
                "-e", "trace=execve,connect,writev,clone,exit_group"] + z.argv("/locks/bench", ["true"])
        pid = spawn(argv)
        reap(pid)
        with open(path) as f:
            first = f.readline().split()
        p = parse_strace(path, int(first[0])) if first else None
        if p and i >= 2:
            requests = p.pop("_requests")
            forks = p.pop("_forks")
            phases.append(p)
    # zklock's own timers, without strace: "acquired ... in X" (main() to command spawned)
    # and "released ... after Y" (main() to lock node deleted), from -vv.
    own = {"acquired": [], "released": [], "wall": []}
    errf = os.path.join(tmp, "vv.txt")
    for i in range(a.phase_runs + 2):
        if os.path.exists(errf):
            os.unlink(errf)
        wall, code, _, _ = run_once(z.argv("/locks/bench", ["true"], extra=["-vv"]), stderr=errf)
        text = open(errf).read()
        m1 = re.search(r"acquired \S+ in ([\d.]+)(µs|ms|s)", text)
        m2 = re.search(r"released \S+ after ([\d.]+)(µs|ms|s)", text)
        if i >= 2 and m1 and m2:
            unit = {"µs": 1e-3, "ms": 1.0, "s": 1e3}
            own["acquired"].append(float(m1.group(1)) * unit[m1.group(2)])
            own["released"].append(float(m2.group(1)) * unit[m2.group(2)])
            own["wall"].append(ms(wall))
    rows = []
    out = {}
    if phases:
        for k in phases[0]:
            vals = [p[k] * 1e3 for p in phases]
            out[k] = {"median": statistics.median(vals), "p99": pct(vals, 99)}
            rows.append([k, fmt(out[k]["median"], 2), fmt(out[k]["p99"], 2)])
    txt = table(["phase (under strace)", "median ms", "p99 ms"], rows)
    txt += "\n\nrequests sent, in order: " + (" ".join(requests or [])) + f"; processes forked by zklock: {forks}"
    if own["wall"]:
        acq, rel, wall = (statistics.median(own[k]) for k in ("acquired", "released", "wall"))
        out["own_timers"] = {"acquired_ms": acq, "released_ms": rel, "wall_ms": wall}
        txt += ("\n\nwithout strace, zklock -vv's own timers (medians): main() to command spawned "
                f"{fmt(acq, 2)} ms; main() to lock node deleted {fmt(rel, 2)} ms; whole process "
                f"{fmt(wall, 2)} ms, so process start + session close + exit take {fmt(wall - rel, 2)} ms.")
    log(txt)
    # syscall counts of one cycle
    cpath = os.path.join(tmp, "count.txt")
    pid = spawn(["strace", "-f", "-c", "-o", cpath] + z.argv("/locks/bench", ["true"]))
    reap(pid)
    counts = open(cpath).read() if os.path.exists(cpath) else ""
    m = re.search(r"^\s*100\.00\s+\S+\s+\S+\s+(\d+)\s+(\d*)\s*total", counts, re.M)
    ncalls = int(m.group(1)) if m else None
    txt += f"\n\none cycle makes {ncalls} system calls (strace -f -c, zklock and its command)."
    out["syscalls"] = ncalls
    res.setdefault("phases", {})[z.name] = out
    res["md"].append(f"### 1b. {z.name}'s phases\n\nFrom `strace --seccomp-bpf -f -ttt` on execve, connect, "
                     "writev, clone, exit_group (each traced call costs a few tens of µs, so these add up to "
                     "more than the untraced cycle), and zklock -vv's own timers.\n\n" + txt + "\n")


# ---------------------------------------------------------------------------------------------
# figure 2: handoff


def queue_len(tool, zk, etcd, lock):
    if tool.kind == "zk":
        return max(0, len(zk.children(lock)) - 1)
    if tool.kind == "etcd":
        return max(0, etcd.count(lock) - 1)
    return blocked_flocks()


def contention_trial(a, tool, zk, etcd, lock, k, tag, extra=(), queue_timeout=120, run_timeout=300,
                     measure_waiters=False, gate_extra=None, analyse=None):
    """A gate holder, then k contenders queued behind it, then the gate opens. Returns the
    stamps, exit codes, and server-side counters around the release. `gate_extra` gives the
    gate holder other options than the contenders; `analyse` judges the stamps (default:
    mutual exclusion and the gaps from one holder to the next)."""
    gate_extra = extra if gate_extra is None else gate_extra
    analyse = analyse or analyse_stamps
    stamps = os.path.join(a.work, f"{tag}.stamps")
    gate = os.path.join(a.work, f"{tag}.gate")
    errlog = os.path.join(a.out, "logs", f"{tag}.log")
    for p in (stamps, gate):
        if os.path.exists(p):
            os.unlink(p)
    os.mkfifo(gate)
    r = {"k": k, "ok": True, "notes": [], "gaps": [], "violations": []}
    holder = spawn(tool.argv(lock, [a.stamp, stamps, "gate", "--gate", gate], extra=gate_extra), stderr=errlog)
    if not wait_for(lambda: any(e["id"] == "gate" for e in read_stamps(stamps)), 60):
        r["ok"] = False
        r["notes"].append("the gate holder never got the lock")
        kill_group(holder)
        return r
    hold = ["--hold-us", str(int(a.hold_ms * 1000))] if a.hold_ms else []
    pids = [spawn(tool.argv(lock, [a.stamp, stamps, str(i)] + hold, extra=extra), stderr=errlog) for i in range(k)]
    t_spawned = now()
    queued = wait_for(lambda: queue_len(tool, zk, etcd, lock) >= k, queue_timeout, step=0.05)
    r["queue_s"] = (now() - t_spawned) / 1e9
    if not queued:
        r["notes"].append(f"only {queue_len(tool, zk, etcd, lock)} of {k} queued within {queue_timeout}s")
    time.sleep(0.3)  # the last ones to queue set their watch right after their create
    if measure_waiters:
        r["waiters"] = measure_group(pids)
    if tool.kind == "zk":
        r["watches_while_queued"] = zk.total_watches()
        before = zk.watches_triggered()
    elif tool.kind == "etcd":
        before = etcd.events_sent()
    open_gate(gate)
    t_gate = now()
    codes, pending = wait_all([holder] + pids, now() + int(run_timeout * 1e9))
    r["run_s"] = (now() - t_gate) / 1e9
    if pending:
        r["ok"] = False
        r["notes"].append(f"{len(pending)} contenders still running after {run_timeout}s; killed")
        for p in pending:
            kill_group(p)
        wait_all(pending, now() + int(5e9))
        kill_stamped(stamps)
    bad = [c for c in codes.values() if c != 0]
    if bad:
        r["ok"] = False
        r["notes"].append(f"{len(bad)} exited non-zero: {sorted(set(bad))}")
    time.sleep(0.2)
    if tool.kind == "zk":
        after = zk.watches_triggered()
        r["notifications"] = {kk: after[kk] - before[kk] for kk in after}
    elif tool.kind == "etcd" and before is not None:
        after = etcd.events_sent()
        r["notifications"] = {"events": (after or 0) - before}
    ev = read_stamps(stamps)
    r.update(analyse(ev, k + 1))
    if r.get("violations"):
        r["ok"] = False
    os.unlink(gate)
    return r


def analyse_stamps(ev, expected):
    """Holders in start order: gaps from one end to the next start, and safety checks."""
    starts = [e for e in ev if e["kind"] == "S"]
    ends = {e["id"]: e for e in ev if e["kind"] == "E"}
    out = {"holders": len(starts), "gaps": [], "violations": []}
    ids = [e["id"] for e in starts]
    if len(set(ids)) != len(ids):
        out["violations"].append("a contender ran twice")
    if len(starts) != expected:
        out["violations"].append(f"{len(starts)} of {expected} ran")
    # mutual exclusion: the sequence must be S E S E ... of the same id
    open_id = None
    for e in ev:
        if e["kind"] == "S":
            if open_id is not None:
                out["violations"].append(f"{e['id']} started while {open_id} held the lock")
            open_id = e["id"]
        elif e["kind"] == "E":
            open_id = None
    for prev, nxt in zip(starts, starts[1:]):
        end = ends.get(prev["id"])
        if end:
            out["gaps"].append(nxt["t"] - end["t"])
    # order: with zklock the node names tell the queue order
    seqs = []
    for e in starts:
        m = re.search(r"(\d+)$", e["node"])
        seqs.append(int(m.group(1)) if m and e["node"] != "-" else None)
    if seqs and all(s is not None for s in seqs):
        out["in_order"] = all(x < y for x, y in zip(seqs, seqs[1:]))
    return out


def analyse_readers(ev, expected):
    """A writer gate, then readers: each reader's gap from the writer's end to its own start;
    no reader may start before the writer ended."""
    starts = [e for e in ev if e["kind"] == "S"]
    ends = {e["id"]: e for e in ev if e["kind"] == "E"}
    out = {"holders": len(starts), "gaps": [], "violations": []}
    if len(starts) != expected:
        out["violations"].append(f"{len(starts)} of {expected} ran")
    gate_end = ends.get("gate")
    if gate_end is None:
        out["violations"].append("the writer never ended")
        return out
    for e in starts:
        if e["id"] == "gate":
            continue
        if e["t"] < gate_end["t"]:
            out["violations"].append(f"reader {e['id']} started before the writer ended")
        out["gaps"].append(e["t"] - gate_end["t"])
    # readers hold together: the most at once
    events = sorted([(e["t"], 1) for e in starts if e["id"] != "gate"]
                    + [(ends[e["id"]]["t"], -1) for e in starts if e["id"] != "gate" and e["id"] in ends],
                    key=lambda x: (x[0], x[1]))
    now_, most = 0, 0
    for _, d in events:
        now_ += d
        most = max(most, now_)
    out["most_readers_at_once"] = most
    return out


def fig_modes(a, tools, zk, etcd, res):
    """zklock's handoff in its other modes, beside the exclusive lock in the same rounds."""
    z = next((t for t in tools if t.name == "zklock"), None)
    if z is None:
        return
    log(f"\n== 6. modes: zklock's handoff, exclusive / --limit 1 / --write (gap from one holder's end to the "
        f"next one's start) and --shared (gap from a --write gate's end to each reader's start), K in {a.ks} ==")
    zk.rmr("/bench/modes")
    modes = [("exclusive", [], [], None), ("--limit 1", ["--limit", "1"], None, None),
             ("--write", ["--write"], None, None), ("--shared", ["--shared"], ["--write"], analyse_readers)]
    data = {m[0]: {k: [] for k in a.ks} for m in modes}
    for k in a.ks:
        for rep in range(max(a.reps, math.ceil(a.min_gaps / k))):
            order = modes[rep % len(modes):] + modes[:rep % len(modes)]
            for name, extra, gate_extra, analyse in order:
                slug = name.strip("-").replace(" ", "")
                lock = f"/bench/modes/{slug}/k{k}r{rep}"
                r = contention_trial(a, z, zk, etcd, lock, k, f"modes-{slug}-k{k}-r{rep}", extra=extra,
                                     gate_extra=gate_extra, analyse=analyse)
                data[name][k].append(r)
                if not r["ok"]:
                    log(f"  {name} K={k} round {rep}: PROBLEM: {'; '.join(r['notes'] + r['violations'])}")
    out, rows = {}, []
    for name, *_ in modes:
        out[name] = {}
        for k in a.ks:
            trials = data[name][k]
            s = stats_ms([g for r in trials for g in r["gaps"]])
            ok = all(r["ok"] for r in trials)
            problems = sorted({p for r in trials for p in r["notes"] + r["violations"]})
            together = [r.get("most_readers_at_once") for r in trials if r.get("most_readers_at_once") is not None]
            notif = None
            if all(r.get("notifications") is not None for r in trials):
                notif = sum(sum(r["notifications"].values()) for r in trials) / sum(r["k"] for r in trials)
            out[name][k] = dict(s, ok=ok, problems=problems, most_readers_at_once=together,
                                notifications_per_handoff=notif)
            rows.append([name, k, s["n"], fmt(s.get("median"), 2), fmt(s.get("p99"), 2),
                         fmt(notif, 2) if notif is not None else "-",
                         "/".join(str(t) for t in together) if together else "-",
                         "yes" if ok else "NO: " + "; ".join(problems)[:80]])
    txt = table(["mode", "K", "gaps", "median ms", "p99 ms", "notifications per contender",
                 "readers at once", "bound kept, all ran"], rows)
    log(txt)
    res["modes"] = out
    res["md"].append("### 6. Modes\n\nzklock only. Exclusive, --limit 1 and --write: K contenders behind a gate "
                     "holder of the same mode; gap = one holder's end stamp to the next one's start stamp. "
                     "--shared: K readers behind a --write gate holder; gap = the writer's end stamp to each "
                     "reader's start stamp (all K are released at once).\n\n" + txt + "\n")


def fig_recursive(a, tools, zk, etcd, res):
    """zklock status --recursive over many locks: wall time, locks per second, CPU, peak RSS."""
    z = next((t for t in tools if t.name == "zklock"), None)
    n = a.recursive_locks
    if z is None or n <= 0:
        return
    log(f"\n== 7. status --recursive over {n} locks (100 per parent, each with one lock node), 5 runs per format ==")
    c = zk.client
    root = "/bench/many"
    zk.rmr(root)
    c.ensure_path(root)
    for g in range(n // 100):
        parent = f"{root}/g{g:03}"
        c.create(parent, b"")
        for r in [c.create_async(f"{parent}/l{i:03}", b"") for i in range(100)]:
            r.get()
        for r in [c.create_async(f"{parent}/l{i:03}/_c_x-lock-0000000001", b"") for i in range(100)]:
            r.get()
    rows, out = [], {}
    for form in ("text", "json", "prometheus"):
        walls, cpus, rsss, codes = [], [], [], []
        for _ in range(5):
            wall, code, cpu, rss = run_once([a.zklock, "status", "-z", a.zk, "-r", "--format", form, root])
            walls.append(wall)
            cpus.append(cpu)
            rsss.append(rss)
            codes.append(code)
        med = statistics.median(walls) / 1e9
        out[form] = {"median_s": med, "locks_per_s": n / med, "cpu_ms_median": statistics.median(cpus),
                     "peak_rss_kib_max": max(rsss), "exit_codes": sorted(set(codes))}
        rows.append([form, fmt(med * 1e3, 1), fmt(n / med, 0), fmt(statistics.median(cpus), 1),
                     fmt(max(rsss) / 1024, 1), "/".join(str(x) for x in sorted(set(codes)))])
    zk.rmr(root)
    txt = table(["format", "median ms", "locks per second", "CPU ms", "peak RSS MiB", "exit"], rows)
    log(txt)
    res["recursive"] = out
    res["md"].append(f"### 7. status --recursive\n\n`zklock status -r --format F /bench/many` over {n} locks "
                     "(100 per parent, one lock node each), 5 runs per format; whole-process wall time, CPU "
                     "(user+sys), peak RSS (wait4).\n\n" + txt + "\n")


def supports(tool, option):
    """Whether this zklock build's `run --help` lists `option` (an older build may not have it)."""
    try:
        r = subprocess.run([tool.argv("/x", ["true"])[0], "run", "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return option in r.stdout


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def expired_trial(a, tool, zk, lock, tag, holder_extra, waiter_extra):
    """One handoff after an expired holder: a holder (a long-running command), one waiter queued
    behind it, then kill -9 of the holder's zklock alone (not its group: its guard kills the
    command's group, its session lives until the server expires it). Returns the time from the
    kill to the waiter's command start, and what the logs say."""
    stamps = os.path.join(a.work, f"{tag}.stamps")
    herr = os.path.join(a.out, "logs", f"{tag}-holder.log")
    werr = os.path.join(a.out, "logs", f"{tag}-waiter.log")
    for p in (stamps, herr, werr):
        if os.path.exists(p):
            os.unlink(p)
    st = ["--session-timeout", a.expired_session_timeout, "-vv"]
    r = {"ok": True, "notes": []}
    holder = spawn(tool.argv(lock, [a.stamp, stamps, "holder", "--hold-us", str(600 * 10**6)],
                             extra=st + holder_extra), stderr=herr)
    hs = wait_for(lambda: [e for e in read_stamps(stamps) if e["id"] == "holder"], 60)
    if not hs:
        r.update(ok=False, notes=["the holder never got the lock"])
        kill_group(holder)
        reap(holder)
        return r
    cmd_pid = hs[0]["pid"]
    waiter = spawn(tool.argv(lock, [a.stamp, stamps, "waiter"], extra=st + waiter_extra), stderr=werr)
    if not wait_for(lambda: len(zk.children(lock)) >= 2, 60, step=0.02):
        r.update(ok=False, notes=["the waiter never queued"])
    time.sleep(0.3)  # the waiter sets its watch right after its listing
    t_kill = now()
    os.kill(holder, signal.SIGKILL)  # zklock alone: its guard is the one to kill the command's group
    reap(holder)
    wait_for(lambda: not pid_alive(cmd_pid), 10, step=0.001)
    t_cmd_dead = now()
    r["command_killed_ms"] = ms(t_cmd_dead - t_kill) if not pid_alive(cmd_pid) else None
    if r["command_killed_ms"] is None:
        r["notes"].append("the holder's command outlived its zklock by 10 s")
    codes, pending = wait_all([waiter], t_kill + int(a.expired_window * 1e9))
    if pending:
        r.update(ok=False)
        r["notes"].append(f"the waiter did not finish within {a.expired_window} s; killed")
        kill_group(waiter)
        wait_all([waiter], now() + int(5e9))
    elif codes.get(waiter) != 0:
        r.update(ok=False)
        r["notes"].append(f"the waiter exited {codes.get(waiter)}")
    if pid_alive(cmd_pid):
        os.kill(cmd_pid, signal.SIGKILL)
    ev = read_stamps(stamps)
    ws = next((e for e in ev if e["id"] == "waiter" and e["kind"] == "S"), None)
    r["kill_to_start_s"] = (ws["t"] - t_kill) / 1e9 if ws else None
    r["overlap"] = bool(ws and (r["command_killed_ms"] is None or ws["t"] < t_cmd_dead))
    if r["overlap"]:
        r["ok"] = False
        r["notes"].append("the waiter started while the holder's command still ran")
    for who, path in (("holder", herr), ("waiter", werr)):
        text = open(path, errors="replace").read() if os.path.exists(path) else ""
        m = re.search(r"negotiated timeout of (\S+)", text)
        r[f"{who}_negotiated"] = m.group(1) if m else None
    text = open(werr, errors="replace").read() if os.path.exists(werr) else ""
    m = re.search(r"waiting out its lock-delay of (\S+)", text)
    r["delay_logged"] = m.group(1) if m else None
    return r


def fig_expired(a, tools, zk, etcd, res):
    """Figure 8: the handoff after a holder vanished without a clean release (kill -9 of its
    zklock, the session expired by the server), with and without the lock-delay."""
    zs = [t for t in tools if t.is_zklock]
    if not zs:
        return
    # (tool, configuration, holder's extra options, waiter's extra options)
    configs = []
    for t in zs:
        if supports(t, "--lock-delay"):
            configs += [(t, "--lock-delay 0s (holder and waiter)", ["--lock-delay", "0s"], ["--lock-delay", "0s"]),
                        (t, "default lock-delay (= T)", [], []),
                        (t, "waiter --lock-delay 0s, holder default", [], ["--lock-delay", "0s"])]
        else:
            configs.append((t, "no --lock-delay (this build has none)", [], []))
    log(f"\n== 8. handoff after an expired holder: kill -9 of the holder's zklock, session timeout "
        f"{a.expired_session_timeout}, {a.expired_rounds} rounds of {len(configs)} configurations interleaved ==")
    zk.rmr("/bench/expired")
    data = {(t.name, c): [] for t, c, _, _ in configs}
    for rep in range(a.expired_rounds):
        order = configs[rep % len(configs):] + configs[:rep % len(configs)]
        for t, c, hx, wx in order:
            slug = re.sub(r"[^a-z0-9]+", "-", c.lower()).strip("-")
            r = expired_trial(a, t, zk, f"/bench/expired/{t.name}/{slug}/r{rep}", f"expired-{t.name}-{slug}-r{rep}",
                              hx, wx)
            data[(t.name, c)].append(r)
            log(f"  {t.name:14} {c:40} round {rep}: kill -> waiter's command {fmt(r.get('kill_to_start_s'), 2)} s, "
                f"holder's command killed after {fmt(r.get('command_killed_ms'), 1)} ms, negotiated "
                f"{r.get('holder_negotiated')}/{r.get('waiter_negotiated')}, delay logged {r.get('delay_logged') or '-'}"
                + ("" if r["ok"] else f"  PROBLEM: {'; '.join(r['notes'])}"))
    zk.rmr("/bench/expired")
    out, rows = {}, []
    for t, c, _, _ in configs:
        trials = data[(t.name, c)]
        xs = [r["kill_to_start_s"] for r in trials if r.get("kill_to_start_s") is not None]
        kills = [r["command_killed_ms"] for r in trials if r.get("command_killed_ms") is not None]
        neg = sorted({f"{r.get('holder_negotiated')}/{r.get('waiter_negotiated')}" for r in trials})
        delays = sorted({r.get("delay_logged") or "none" for r in trials})
        ok = all(r["ok"] for r in trials)
        problems = sorted({p for r in trials for p in r["notes"]})
        o = {"n": len(xs), "samples_s": xs, "median_s": statistics.median(xs) if xs else None,
             "min_s": min(xs) if xs else None, "max_s": max(xs) if xs else None,
             "command_killed_ms_median": statistics.median(kills) if kills else None,
             "negotiated": neg, "delay_logged": delays, "ok": ok, "problems": problems}
        out.setdefault(t.name, {})[c] = o
        rows.append([t.name, c, o["n"], fmt(o["median_s"], 2), fmt(o["min_s"], 2), fmt(o["max_s"], 2),
                     fmt(o["command_killed_ms_median"], 1), ", ".join(neg), ", ".join(delays),
                     "yes" if ok else "NO: " + "; ".join(problems)[:80]])
    txt = table(["tool", "configuration", "samples", "kill -> waiter's command, median s", "min s", "max s",
                 "holder's command killed after, ms", "negotiated T (holder/waiter)", "delay the waiter logged",
                 "no overlap, all ok"], rows)
    log(txt)
    res["expired"] = out
    res["md"].append("### 8. Handoff after an expired holder\n\nA holder (command: a 600 s sleep) and one waiter "
                     f"on a fresh lock, both `--session-timeout {a.expired_session_timeout} -vv`; once the lock "
                     "directory has 2 children (and 0.3 s more), `kill -9` of the holder's zklock alone: its guard "
                     "kills the command's group, its session lives until the server expires it. Time from the kill "
                     "to the waiter's command start stamp. The lock-delay a waiter waits is the vanished holder's "
                     "(stored in its node), so `--lock-delay 0s` on the waiter alone does not remove it.\n\n"
                     + txt + "\n")


def fig_handoff(a, tools, zk, etcd, res):
    log(f"\n== 2. handoff: K contenders queued behind a gate holder, K in {a.ks}, at least {a.reps} rounds and "
        f"{a.min_gaps} gaps per K, tools interleaved ==")
    zk.rmr("/bench/handoff")
    etcd.delete_prefix("/bench/handoff")
    zk.four("srst")  # server latency statistics from here on
    data = {t.name: {k: [] for k in a.ks} for t in tools}
    for k in a.ks:
        # at least --min-gaps gaps per tool and K (more rounds for small K), at least --reps rounds
        for rep in range(max(a.reps, math.ceil(a.min_gaps / k))):
            order = tools[rep % len(tools):] + tools[:rep % len(tools)]
            for t in order:
                if t.name == "curator" and k > a.jvm_max_k:
                    continue
                lock = f"/bench/handoff/{t.name}/k{k}r{rep}"
                r = contention_trial(a, t, zk, etcd, lock, k, f"handoff-{t.name}-k{k}-r{rep}")
                data[t.name][k].append(r)
                g = stats_ms(r["gaps"])
                log(f"  {t.name:8} K={k:<4} round {rep}: gap median {fmt(g.get('median'), 2)} ms, "
                    f"p99 {fmt(g.get('p99'), 2)} ms, queued in {fmt(r.get('queue_s'), 1)} s"
                    + ("" if r["ok"] else f"  PROBLEM: {'; '.join(r['notes'] + r['violations'])}"))
    out = {}
    rows = []
    for t in tools:
        out[t.name] = {}
        for k in a.ks:
            trials = data[t.name][k]
            if not trials:
                continue
            gaps = [g for r in trials for g in r["gaps"]]
            s = stats_ms(gaps)
            notif = None
            herd = None
            kinds = {}
            if all(r.get("notifications") is not None for r in trials):
                handoffs = sum(r["k"] for r in trials)
                tot = sum(sum(r["notifications"].values()) for r in trials)
                notif = tot / handoffs
                herd = sum(r["notifications"].get("children", 0) for r in trials) / handoffs
                for r in trials:
                    for kk, v in r["notifications"].items():
                        kinds[kk] = kinds.get(kk, 0) + v / handoffs
            watches = [r.get("watches_while_queued") for r in trials if r.get("watches_while_queued") is not None]
            ok = all(r["ok"] for r in trials)
            problems = sorted({p for r in trials for p in r["notes"] + r["violations"]})
            out[t.name][k] = dict(s, notifications_per_handoff=notif, children_notifications_per_handoff=herd,
                                  notifications_by_kind=kinds,
                                  watches_while_queued=watches, ok=ok, problems=problems,
                                  in_order=all(r.get("in_order", True) for r in trials))
            rows.append([t.name, k, s["n"], fmt(s.get("median"), 2), fmt(s.get("p99"), 2),
                         (fmt(notif, 2) + (" (" + ", ".join(f"{kk} {fmt(v, 2)}" for kk, v in kinds.items() if v)
                                           + ")" if t.kind == "zk" else "")) if notif is not None else "-",
                         "/".join(str(w) for w in watches) if watches else "-",
                         "yes" if ok else "NO: " + "; ".join(problems)[:80]])
    flat = []
    for t in tools:
        ks = [k for k in a.ks if k in out[t.name] and out[t.name][k]["n"]]
        if len(ks) >= 2:
            lo, hi = out[t.name][ks[0]]["median"], out[t.name][ks[-1]]["median"]
            flat.append(f"{t.name}: median {fmt(lo, 2)} ms at K={ks[0]} -> {fmt(hi, 2)} ms at K={ks[-1]} "
                        f"({fmt(hi / lo if lo else float('nan'), 2)}x)")
    txt = table(["tool", "K", "gaps", "median ms", "p99 ms", "notifications per handoff", "watches while queued",
                 "mutual exclusion, all ran"], rows)
    txt += "\n\nflatness: " + "; ".join(flat)
    m = zk.mntr()
    server = {k: m.get(f"zk_{k}") for k in ("p50_updatelatency", "p99_updatelatency", "avg_updatelatency",
                                            "p50_readlatency", "p99_readlatency", "avg_fsynctime", "max_fsynctime")}
    txt += ("\n\nZooKeeper's own latency over this figure (mntr, ms, integer resolution): writes p50 "
            f"{server['p50_updatelatency']}, p99 {server['p99_updatelatency']}, mean {fmt(server['avg_updatelatency'], 2)}; "
            f"reads p50 {server['p50_readlatency']}, p99 {server['p99_readlatency']}; fsync mean "
            f"{fmt(server['avg_fsynctime'], 2)}, max {server['max_fsynctime']}")
    res["zk_server_during_handoff"] = server
    log(txt)
    res["handoff"] = out
    res["md"].append("### 2. Handoff\n\nK contenders started together behind a gate holder; once all K are "
                     "queued the gate opens. Gap = one holder's command end stamp to the next holder's start "
                     "stamp (CLOCK_MONOTONIC, bench/peers/stamp.c). Notifications per handoff: ZooKeeper watches "
                     "triggered (mntr zk_sum_node_*_watch_count deltas) / K; for etcd, events sent to watchers "
                     "(etcd_debugging_mvcc_events_total delta) / K. Watches while queued: wchs total.\n\n"
                     + txt + "\n")


# ---------------------------------------------------------------------------------------------
# figure 3: memory and idle CPU while holding


def snapshot(pid):
    st = proc_status(pid)
    if st is None:
        return None
    kids = descendants(pid)
    kid_rss = sum(kib((proc_status(c) or {}).get("VmRSS")) for c in kids)
    return {"ticks": proc_cpu_ticks(pid), "ns": proc_cpu_ns(pid), "hwm": kib(st.get("VmHWM")),
            "rss": kib(st.get("VmRSS")), "threads": int(st.get("Threads", 0)), "pss": proc_pss_kib(pid),
            "children": len(kids), "children_rss": kid_rss, "t": now()}


def fig_idle(a, tools, zk, etcd, res):
    log(f"\n== 3. memory and CPU while holding, idle for {a.idle} s (all tools at once, each its own lock) ==")
    holders = {}
    for t in tools:
        stamps = os.path.join(a.work, f"idle-{t.name}.stamps")
        gate = os.path.join(a.work, f"idle-{t.name}.gate")
        for p in (stamps, gate):
            if os.path.exists(p):
                os.unlink(p)
        os.mkfifo(gate)
        pid = spawn(t.argv(f"/bench/idle/{t.name}", [a.stamp, stamps, t.name, "--gate", gate]),
                    stderr=os.path.join(a.out, "logs", "idle.log"))
        holders[t.name] = (pid, stamps, gate)
    for name, (pid, stamps, gate) in holders.items():
        if not wait_for(lambda: read_stamps(stamps), 60):
            log(f"  {name}: never got its lock")
    time.sleep(a.settle)
    before = {n: snapshot(p) for n, (p, _, _) in holders.items()}
    time.sleep(a.idle)
    after = {n: snapshot(p) for n, (p, _, _) in holders.items()}
    for name, (pid, stamps, gate) in holders.items():
        open_gate(gate)
    wait_all([p for p, _, _ in holders.values()], now() + int(60e9))
    out, rows = {}, []
    for t in tools:
        b, e = before.get(t.name), after.get(t.name)
        if not b or not e:
            rows.append([t.name] + ["-"] * 8)
            continue
        secs = (e["t"] - b["t"]) / 1e9
        cpu_ticks = (e["ticks"] - b["ticks"]) / CLK_TCK
        cpu_ns = cpu_ns_delta(b["ns"], e["ns"]) / 1e9
        o = {"vmhwm_mib": e["hwm"] / 1024, "vmrss_mib": e["rss"] / 1024, "pss_mib": e["pss"] / 1024,
             "threads": e["threads"], "children": e["children"], "children_rss_mib": e["children_rss"] / 1024,
             "cpu_pct_ticks": 100 * cpu_ticks / secs, "cpu_pct_schedstat": 100 * cpu_ns / secs,
             "cpu_ms_per_min": 60e3 * cpu_ns / secs, "window_s": secs}
        out[t.name] = o
        rows.append([t.name, fmt(o["vmhwm_mib"], 1), fmt(o["vmrss_mib"], 1), fmt(o["pss_mib"], 1), o["threads"],
                     f"{o['children']} ({fmt(o['children_rss_mib'], 1)} MiB)", fmt(o["cpu_pct_ticks"], 3),
                     fmt(o["cpu_pct_schedstat"], 4), fmt(o["cpu_ms_per_min"], 1)])
    txt = table(["tool", "peak RSS (VmHWM) MiB", "RSS MiB", "PSS MiB", "threads", "children (their RSS)",
                 "CPU % (utime+stime)", "CPU % (schedstat)", "CPU ms/min"], rows)
    log(txt)
    res["idle"] = out
    res["md"].append(f"### 3. Memory and idle CPU while holding\n\nEach wrapper holds its own lock with a command "
                     f"that blocks; after {a.settle} s to settle, {fmt(a.idle, 0)} s idle. Peak RSS is the wrapper "
                     "process's VmHWM (its children, the stamp command and for the JVM/Python peers nothing else, "
                     "are listed apart); CPU is the wrapper's utime+stime delta (10 ms ticks) and the sum of its "
                     "threads' schedstat run time (ns), as a percent of one core.\n\n" + txt + "\n")


# ---------------------------------------------------------------------------------------------
# figure 4: loss detection behind a silent partition


def fig_loss(a, tools, zk, etcd, res):
    net = [t for t in tools if t.kind in ("zk", "etcd")]
    if not net:
        return
    log(f"\n== 4. loss detection: holders behind a loopback proxy that goes silent (sockets stay open), "
        f"{a.loss_window} s window ==")
    zk.rmr("/bench/loss")
    etcd.delete_prefix("/bench/loss")
    runs = {}
    for t in net:
        target = (zk.host, zk.port) if t.kind == "zk" else tuple(
            [a.etcd.split(":")[0], int(a.etcd.split(":")[1])])
        px = Proxy(target).start()
        lock = f"/bench/loss/{t.name}"
        sa = os.path.join(a.work, f"loss-{t.name}-A.stamps")
        sb = os.path.join(a.work, f"loss-{t.name}-B.stamps")
        errf = os.path.join(a.out, "logs", f"loss-{t.name}-A.log")
        for p in (sa, sb, errf):
            if os.path.exists(p):
                os.unlink(p)
        extra = ["-vv"] if t.is_zklock else []
        pa = spawn(t.argv(lock, [a.stamp, sa, "A", "--until-signal"], endpoint=f"127.0.0.1:{px.port}", extra=extra),
                   stderr=errf)
        runs[t.name] = {"proxy": px, "lock": lock, "sa": sa, "sb": sb, "pa": pa, "errf": errf, "tool": t}
    for name, r in runs.items():
        if not wait_for(lambda: read_stamps(r["sa"]), 60):
            log(f"  {name}: holder A never got the lock")
    # B: a second contender on the same lock, connected directly (the other side of the partition)
    for name, r in runs.items():
        r["pb"] = spawn(r["tool"].argv(r["lock"], [a.stamp, r["sb"], "B"]),
                        stderr=os.path.join(a.out, "logs", f"loss-{name}-B.log"))
    time.sleep(3)
    for r in runs.values():
        r["c2s_before"] = r["proxy"].last["c2s"]
        r["s2c_before"] = r["proxy"].last["s2c"]
        r["t_freeze"] = r["proxy"].freeze()
    deadline = time.monotonic() + a.loss_window
    while time.monotonic() < deadline:
        if all(read_stamps(r["sb"]) and any(e["kind"] == "G" for e in read_stamps(r["sa"])) for r in runs.values()):
            break
        time.sleep(0.05)
    out, rows = {}, []
    for name, r in runs.items():
        evA = read_stamps(r["sa"])
        evB = read_stamps(r["sb"])
        stop = next((e for e in evA if e["kind"] == "G"), None)
        b_start = next((e for e in evB if e["kind"] == "S"), None)
        last_ok = r["c2s_before"] if (r["c2s_before"] and r["s2c_before"] and r["s2c_before"] >= r["c2s_before"]) \
            else None
        o = {"freeze_to_stop_s": (stop["t"] - r["t_freeze"]) / 1e9 if stop else None,
             "last_heartbeat_to_stop_s": (stop["t"] - last_ok) / 1e9 if stop and last_ok else None,
             "freeze_to_B_start_s": (b_start["t"] - r["t_freeze"]) / 1e9 if b_start else None,
             "overlap": bool(b_start and (not stop or stop["t"] > b_start["t"]))}
        if r["tool"].is_zklock:
            text = open(r["errf"]).read()
            m = re.search(r"stop signal (\S+) and SIGKILL (\S+) after the last confirmed heartbeat", text)
            if m:
                o["threshold"] = m.group(1)
                o["sigkill_after"] = m.group(2)
        out[name] = o
        thr = o.get("threshold", "none (does not stop its command)")
        rows.append([name, thr, fmt(o["last_heartbeat_to_stop_s"], 3) if stop else "never",
                     fmt(o["freeze_to_stop_s"], 3) if stop else "never",
                     fmt(o["freeze_to_B_start_s"], 2) if b_start else f"not within {a.loss_window} s",
                     "YES: two holders ran at once" if o["overlap"] else "no"])
        # clean up: A and its command, B, the proxy
        for p in (r["pa"], r["pb"]):
            kill_group(p)
        kill_stamped(r["sa"])
        kill_stamped(r["sb"])
        wait_all([r["pa"], r["pb"]], now() + int(10e9))
        r["proxy"].close()
    txt = table(["tool", "configured stop threshold", "last heartbeat -> stop signal (s)", "partition -> stop (s)",
                 "partition -> B starts (s)", "overlap"], rows)
    log(txt)
    res["loss"] = out
    res["md"].append("### 4. Loss detection\n\nHolder A connects through bench/lib/proxy.py, a loopback TCP proxy "
                     "that stops forwarding in both directions while keeping every socket open (a silent "
                     "partition; no iptables here). Its command (stamp --until-signal) stamps the stop signal. "
                     "Contender B waits on the same lock, connected directly. 'Last heartbeat' is the last "
                     "request the proxy forwarded to the server before the partition whose reply also got "
                     "through (zklock heartbeats every T/10 = 1 s).\n\n" + txt + "\n")


# ---------------------------------------------------------------------------------------------
# figure 5: scale


def measure_group(pids, window=5.0):
    """Memory of a group of waiting processes, and the CPU they use while waiting for `window` s."""
    rss = pss = hwm = n = 0
    for p in pids:
        st = proc_status(p)
        if not st:
            continue
        n += 1
        rss += kib(st.get("VmRSS"))
        hwm += kib(st.get("VmHWM"))
        pss += proc_pss_kib(p)

    def cpu():
        out = {}
        for p in pids:
            try:
                out[p] = proc_cpu_ns(p)
            except OSError:
                pass
        return out

    t0, c0 = now(), cpu()
    time.sleep(window)
    t1, c1 = now(), cpu()
    busy = sum(cpu_ns_delta(c0.get(p, {}), c1[p]) for p in c1)
    return {"n": n, "rss_kib": rss, "pss_kib": pss, "hwm_kib": hwm,
            "cpu_pct_all_waiters": 100 * busy / (t1 - t0), "cpu_window_s": (t1 - t0) / 1e9}


def fig_scale(a, tools, zk, etcd, res):
    if a.scale <= 0:
        return
    for z in tools:
        if z.is_zklock:
            fig_scale_one(a, z, zk, etcd, res)


def fig_scale_one(a, z, zk, etcd, res):
    log(f"\n== 5. scale: {a.scale} {z.name} processes waiting on one lock ==")
    zk.rmr("/bench/scale")
    zk_before = proc_status(a.zk_pid) if a.zk_pid else None
    r = contention_trial(a, z, zk, etcd, f"/bench/scale/{z.name}", a.scale, f"scale-{z.name}-{a.scale}",
                         extra=["--connect-timeout", "120s"], queue_timeout=300, run_timeout=600,
                         measure_waiters=True)
    gaps = r["gaps"]
    s = stats_ms(gaps)
    deciles = []
    if len(gaps) >= 10:
        step = len(gaps) / 10
        for i in range(10):
            part = gaps[int(i * step):int((i + 1) * step)]
            deciles.append(statistics.median(part) / 1e6)
    w = r.get("waiters", {})
    n = max(1, w.get("n", 1))
    o = dict(s, holders=r.get("holders"), ok=r["ok"], in_order=r.get("in_order"), problems=r["notes"] + r["violations"],
             queue_s=r.get("queue_s"), run_s=r.get("run_s"), decile_medians_ms=deciles,
             rss_per_waiter_mib=w.get("rss_kib", 0) / n / 1024, pss_per_waiter_mib=w.get("pss_kib", 0) / n / 1024,
             waiters_measured=w.get("n"), watches_while_queued=r.get("watches_while_queued"),
             cpu_pct_all_waiters=w.get("cpu_pct_all_waiters"),
             notifications=r.get("notifications"))
    if zk_before:
        o["zk_server_rss_mib_before"] = kib(zk_before.get("VmRSS")) / 1024
    res.setdefault("scale", {})[z.name] = o
    txt = table(["waiters", "all ran once", "in queue order", "mutual exclusion", "gap median ms", "gap p99 ms",
                 "RSS/waiter MiB", "PSS/waiter MiB", "watches while queued", "queued in s", "ran in s"],
                [[a.scale, "yes" if r.get("holders") == a.scale + 1 and not r["violations"] else "NO",
                  "yes" if r.get("in_order") else "NO", "yes" if not r["violations"] else "NO: " + "; ".join(r["violations"])[:60],
                  fmt(s.get("median"), 2), fmt(s.get("p99"), 2), fmt(o["rss_per_waiter_mib"], 2),
                  fmt(o["pss_per_waiter_mib"], 2), r.get("watches_while_queued"), fmt(r.get("queue_s"), 1),
                  fmt(r.get("run_s"), 1)]])
    txt += "\n\ngap median by tenth of the queue (ms): " + " ".join(fmt(d, 2) for d in deciles)
    txt += (f"\n\nwhile all {a.scale} waited: {fmt(w.get('cpu_pct_all_waiters'), 2)}% of one core for all of them "
            f"together over {fmt(w.get('cpu_window_s'), 0)} s (schedstat), "
            f"{fmt(w.get('hwm_kib', 0) / n / 1024, 2)} MiB peak RSS per waiter")
    if zk_before:
        zk_after = proc_status(a.zk_pid)
        if zk_after:
            o["zk_server_rss_mib_after"] = kib(zk_after.get("VmRSS")) / 1024
            txt += (f"; ZooKeeper's RSS {fmt(o['zk_server_rss_mib_before'], 0)} MiB before the figure, "
                    f"{fmt(o['zk_server_rss_mib_after'], 0)} MiB after")
    if r["notes"]:
        txt += "\n\nnotes: " + "; ".join(r["notes"])
    log(txt)
    res["md"].append(f"### 5. Scale: {z.name}\n\n{a.scale} {z.name} processes started together behind a gate holder on one "
                     "lock (`--connect-timeout 120s`). Order is checked with the sequence number of each holder's "
                     "node (ZKLOCK_NODE, recorded by the command); RSS and PSS (/proc/PID/smaps_rollup) summed over "
                     "the waiting processes.\n\n" + txt + "\n")


# ---------------------------------------------------------------------------------------------


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--zk", required=True)
    p.add_argument("--zk-pid", type=int)
    p.add_argument("--etcd", required=True)
    p.add_argument("--tick-ms", type=int, default=2000)
    p.add_argument("--zklock", required=True)
    p.add_argument("--floor", default=None, help="the floor client (bench/floor.rs), for figure 1")
    p.add_argument("--stamp", required=True)
    p.add_argument("--java-cp", required=True)
    p.add_argument("--jvm-flags", default="-XX:+UseSerialGC -XX:TieredStopAtLevel=1")
    p.add_argument("--out", required=True)
    p.add_argument("--tools", default="flock,etcdctl,kazoo,curator,floor,zklock")
    p.add_argument("--figures", default="1,2,3,4,5,6,7")
    p.add_argument("--recursive-locks", type=int, default=10000, help="locks for figure 7")
    p.add_argument("--cycles", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--phase-runs", type=int, default=20)
    p.add_argument("--ks", default="2,8,32,128")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--min-gaps", type=int, default=30)
    p.add_argument("--hold-ms", type=float, default=0, help="how long each handoff contender holds (default 0)")
    p.add_argument("--jvm-max-k", type=int, default=128)
    p.add_argument("--idle", type=float, default=10)
    p.add_argument("--settle", type=float, default=3)
    p.add_argument("--loss-window", type=float, default=25)
    p.add_argument("--scale", type=int, default=200)
    p.add_argument("--expired-rounds", type=int, default=5, help="figure 8: rounds per configuration")
    p.add_argument("--expired-session-timeout", default="4s", help="figure 8: --session-timeout of both")
    p.add_argument("--expired-window", type=float, default=60, help="figure 8: how long the waiter may take")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=PATH",
                   help="also measure this zklock build, as tool zklock-NAME")
    a = p.parse_args()
    a.tools = a.tools.split(",")
    a.ks = [int(x) for x in a.ks.split(",")]
    figs = set(a.figures.split(","))
    a.work = os.path.join(a.out, "tmp")
    os.makedirs(a.work, exist_ok=True)
    os.makedirs(os.path.join(a.out, "logs"), exist_ok=True)

    def on_signal(sig, _frame):
        cleanup_all()
        sys.exit(128 + sig)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    tools = make_tools(a)
    zk = ZK(a.zk)
    etcd = Etcd(a.etcd)
    res = {"md": [], "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "args": {k: v for k, v in vars(a).items()},
           "tools": {t.name: t.note for t in tools}}
    res["loadavg_before"] = open("/proc/loadavg").read().split()[:3]
    t_start = time.monotonic()
    try:
        warm_up(a, tools, zk)
        if "1" in figs:
            fig_cycle(a, tools, zk, etcd, res)
            fig_phases(a, tools, zk, res)
        # The floor runs no command: it has a place in figure 1 only.
        wrappers = [t for t in tools if t.name != "floor"]
        if "2" in figs:
            fig_handoff(a, wrappers, zk, etcd, res)
        if "3" in figs:
            fig_idle(a, wrappers, zk, etcd, res)
        if "4" in figs:
            fig_loss(a, wrappers, zk, etcd, res)
        if "5" in figs:
            fig_scale(a, wrappers, zk, etcd, res)
        if "6" in figs:
            fig_modes(a, wrappers, zk, etcd, res)
        if "7" in figs:
            fig_recursive(a, wrappers, zk, etcd, res)
        if "8" in figs:
            fig_expired(a, wrappers, zk, etcd, res)
    finally:
        cleanup_all()
        zk.stop()
    res["loadavg_after"] = open("/proc/loadavg").read().split()[:3]
    res["duration_s"] = time.monotonic() - t_start
    verdicts = targets(res)
    res["md"].insert(0, "### Targets\n\n" + verdicts + "\n")
    log("\n== targets ==\n" + verdicts)
    md = "\n".join(res.pop("md"))
    header = (f"Run of {res['started']}, {fmt(res['duration_s'] / 60, 1)} min; load average before "
              f"{' '.join(res['loadavg_before'])}, after {' '.join(res['loadavg_after'])}.\n\nTools:\n"
              + "\n".join(f"- {k}: {v}" for k, v in res["tools"].items()) + "\n\n")
    with open(os.path.join(a.out, "summary.md"), "w") as f:
        f.write(header + md)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    log(f"\nwrote {a.out}/summary.md and results.json")


def targets(res):
    """The issue's targets, for zklock and each variant, in one table."""
    names = [n for n in res["tools"] if n == "zklock" or n.startswith("zklock-")]
    c, h, idle = res.get("cycle", {}), res.get("handoff", {}), res.get("idle", {})
    checks = [
        ("uncontended cycle <= 2.5x flock", lambda n: c[n]["median"] / c["flock"]["median"],
         lambda v: v <= 2.5, lambda v: f"{fmt(v, 2)}x", lambda n: n in c and "flock" in c),
        ("uncontended cycle >= 4x faster than etcdctl", lambda n: c["etcdctl"]["median"] / c[n]["median"],
         lambda v: v >= 4, lambda v: f"{fmt(v, 2)}x", lambda n: n in c and "etcdctl" in c),
        ("handoff median <= 1.5 ms (worst K)", lambda n: max(v["median"] for v in h[n].values() if v.get("n")),
         lambda v: v <= 1.5, lambda v: f"{fmt(v, 2)} ms", lambda n: bool(h.get(n))),
        ("handoff p99 <= 3 ms (worst K)", lambda n: max(v["p99"] for v in h[n].values() if v.get("n")),
         lambda v: v <= 3, lambda v: f"{fmt(v, 2)} ms", lambda n: bool(h.get(n))),
        ("handoff flat: median at the largest K / smallest K <= 1.5",
         lambda n: (lambda m: m[max(m)] / m[min(m)])({int(k): v["median"] for k, v in h[n].items() if v.get("n")}),
         lambda v: v <= 1.5, lambda v: f"x{fmt(v, 2)}", lambda n: len(h.get(n, {})) >= 2),
        ("peak RSS <= 6 MiB", lambda n: idle[n]["vmhwm_mib"], lambda v: v <= 6, lambda v: f"{fmt(v, 2)} MiB",
         lambda n: n in idle),
        ("idle CPU while holding < 0.1%", lambda n: idle[n]["cpu_pct_schedstat"], lambda v: v < 0.1,
         lambda v: f"{fmt(v, 4)}%", lambda n: n in idle),
    ]
    rows = []
    for title, value, ok, show, applies in checks:
        cells = []
        for n in names:
            try:
                if not applies(n):
                    cells.append("-")
                    continue
                v = value(n)
                cells.append(f"{show(v)} {'met' if ok(v) else 'MISSED'}")
            except (KeyError, ValueError, ZeroDivisionError):
                cells.append("-")
        if any(x != "-" for x in cells):
            rows.append([title] + cells)
    return table(["target"] + names, rows)


if __name__ == "__main__":
    main()
