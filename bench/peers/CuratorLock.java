// The Curator peer: run a command under Curator's InterProcessMutex, the way a user would.
//
//   java -cp bench/build/java:<Debian's jars> CuratorLock [-z HOSTS] [--session-timeout MS] LOCK -- COMMAND...
//
// Connect, acquire, run the command (ProcessBuilder, inherited stdio), release, close. Exits
// with the command's status. bench/run compiles it with javac against /usr/share/java into
// bench/build/java (git-ignored); nothing compiled is committed.

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.locks.InterProcessMutex;
import org.apache.curator.retry.ExponentialBackoffRetry;

public final class CuratorLock {
    public static void main(String[] argv) throws Exception {
        String zk = "127.0.0.1:2181";
        int sessionMs = 10_000;
        int i = 0;
        for (; i < argv.length && !argv[i].equals("--"); i++) {
            if (argv[i].equals("-z")) zk = argv[++i];
            else if (argv[i].equals("--session-timeout")) sessionMs = Integer.parseInt(argv[++i]);
            else break;
        }
        if (i + 2 > argv.length || argv[i].equals("--") || !argv[i + 1].equals("--")) {
            System.err.println("usage: CuratorLock [-z HOSTS] [--session-timeout MS] LOCK -- COMMAND...");
            System.exit(2);
        }
        String lockPath = argv[i];
        List<String> command = new ArrayList<>(Arrays.asList(argv).subList(i + 2, argv.length));

        CuratorFramework client = CuratorFrameworkFactory.builder()
                .connectString(zk)
                .sessionTimeoutMs(sessionMs)
                .connectionTimeoutMs(10_000)
                .retryPolicy(new ExponentialBackoffRetry(100, 3))
                .build();
        client.start();
        int status;
        try {
            InterProcessMutex mutex = new InterProcessMutex(client, lockPath);
            mutex.acquire();
            try {
                status = new ProcessBuilder(command).inheritIO().start().waitFor();
            } finally {
                mutex.release();
            }
        } finally {
            client.close();
        }
        System.exit(status);
    }
}
