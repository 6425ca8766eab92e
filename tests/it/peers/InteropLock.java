// A Curator peer for the interoperability tests: run a command under Curator's
// InterProcessMutex or one side of its InterProcessReadWriteLock, as a Java service would.
//
//   java -cp <dir>:<Debian's jars> InteropLock ZK mutex|read|write LOCK -- COMMAND...
//
// Connect, acquire, run the command (inherited stdio), release, close; exits with the
// command's status. The tests compile it with javac against /usr/share/java into a temp dir.

import java.util.Arrays;
import java.util.List;

import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.locks.InterProcessMutex;
import org.apache.curator.framework.recipes.locks.InterProcessReadWriteLock;
import org.apache.curator.retry.ExponentialBackoffRetry;

public final class InteropLock {
    public static void main(String[] argv) throws Exception {
        if (argv.length < 5 || !argv[3].equals("--")) {
            System.err.println("usage: InteropLock ZK mutex|read|write LOCK -- COMMAND...");
            System.exit(2);
        }
        List<String> command = Arrays.asList(argv).subList(4, argv.length);
        CuratorFramework client = CuratorFrameworkFactory.builder()
                .connectString(argv[0])
                .sessionTimeoutMs(10_000)
                .connectionTimeoutMs(10_000)
                .retryPolicy(new ExponentialBackoffRetry(100, 3))
                .build();
        client.start();
        int status;
        try {
            InterProcessMutex lock;
            switch (argv[1]) {
                case "mutex": lock = new InterProcessMutex(client, argv[2]); break;
                case "read": lock = new InterProcessReadWriteLock(client, argv[2]).readLock(); break;
                case "write": lock = new InterProcessReadWriteLock(client, argv[2]).writeLock(); break;
                default: throw new IllegalArgumentException("mode " + argv[1]);
            }
            lock.acquire();
            try {
                status = new ProcessBuilder(command).inheritIO().start().waitFor();
            } finally {
                lock.release();
            }
        } finally {
            client.close();
        }
        System.exit(status);
    }
}
