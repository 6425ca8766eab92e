# Sourced by bench/run: start and stop the benchmark's own servers on loopback.
# Every server started is recorded (pid file under $BENCH_WORK/pids) and stopped by that PID.

zk_classpath() {
    local j=/usr/share/java cp="" jar
    # The same jars scripts/zookeeper uses, plus the no-op slf4j binding.
    for jar in zookeeper zookeeper-jute slf4j-api slf4j-nop netty-handler netty-common netty-buffer \
        netty-transport netty-codec netty-resolver netty-transport-native-epoll \
        netty-transport-native-unix-common metrics-core snappy-java commons-cli; do
        cp="$cp${cp:+:}$j/$jar.jar"
    done
    echo "$cp"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

zk_4lw() { # zk_4lw PORT WORD
    { exec 3<>"/dev/tcp/127.0.0.1/$1" && printf '%s' "$2" >&3 && timeout 2 cat <&3; } 2>/dev/null || true
}

record_pid() { echo "$2" >"$BENCH_WORK/pids/$1"; }

start_zookeeper() { # start_zookeeper PORT TICK_MS FSYNC(yes|no)
    local port=$1 tick=$2 fsync=${3:-yes} dir="$BENCH_WORK/zk"
    port_free "$port" || { echo "bench: port $port is in use; pick another with --zk-port" >&2; return 1; }
    mkdir -p "$dir/data"
    cat >"$dir/zoo.cfg" <<CFG
tickTime=$tick
dataDir=$dir/data
clientPort=$port
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=*
# The scale figure runs 1000+ sessions from 127.0.0.1 (the default allows 60 per address).
maxClientCnxns=0
forceSync=$fsync
CFG
    java -Xmx1g -XX:+UseSerialGC -Dzookeeper.preAllocSize=1024 -cp "$(zk_classpath)" \
        org.apache.zookeeper.server.quorum.QuorumPeerMain "$dir/zoo.cfg" >"$dir/zookeeper.log" 2>&1 &
    record_pid zookeeper $!
    local i
    for i in $(seq 300); do
        zk_4lw "$port" srvr | grep -q '^Mode: ' && return 0
        kill -0 "$(cat "$BENCH_WORK/pids/zookeeper")" 2>/dev/null || break
        sleep 0.1
    done
    echo "bench: ZooKeeper did not start; see $dir/zookeeper.log" >&2
    tail -n 20 "$dir/zookeeper.log" >&2
    return 1
}

start_etcd() { # start_etcd CLIENT_PORT PEER_PORT
    local cport=$1 pport=$2 dir="$BENCH_WORK/etcd"
    port_free "$cport" && port_free "$pport" ||
        { echo "bench: port $cport or $pport is in use; pick others with --etcd-port" >&2; return 1; }
    mkdir -p "$dir"
    etcd --name bench --data-dir "$dir/data" \
        --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
        --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
        --initial-cluster "bench=http://127.0.0.1:$pport" --logger=zap --log-outputs=stderr \
        >"$dir/etcd.out" 2>&1 &
    record_pid etcd $!
    local i
    for i in $(seq 300); do
        ETCDCTL_API=3 etcdctl --endpoints="127.0.0.1:$cport" --command-timeout=1s endpoint health >/dev/null 2>&1 && return 0
        kill -0 "$(cat "$BENCH_WORK/pids/etcd")" 2>/dev/null || break
        sleep 0.1
    done
    echo "bench: etcd did not start; see $dir/etcd.out" >&2
    tail -n 20 "$dir/etcd.out" >&2
    return 1
}

stop_servers() {
    local f pid i
    for f in "$BENCH_WORK"/pids/*; do
        [ -f "$f" ] || continue
        pid=$(cat "$f")
        if kill "$pid" 2>/dev/null; then
            for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
            echo "bench: stopped $(basename "$f") (pid $pid)" >&2
        fi
        wait "$pid" 2>/dev/null || true
        rm -f "$f"
    done
}
