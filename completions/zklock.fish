# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_zklock_global_optspecs
    string join \n v/verbose q/quiet h/help V/version
end

function __fish_zklock_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_zklock_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_zklock_using_subcommand
    set -l cmd (__fish_zklock_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c zklock -n "__fish_zklock_needs_command" -s v -l verbose -d 'More messages on stderr (-v: lifecycle, -vv: debug)'
complete -c zklock -n "__fish_zklock_needs_command" -s q -l quiet -d 'Only errors on stderr (status: print nothing, only set the exit status)'
complete -c zklock -n "__fish_zklock_needs_command" -s h -l help -d 'Print help'
complete -c zklock -n "__fish_zklock_needs_command" -s V -l version -d 'Print version'
complete -c zklock -n "__fish_zklock_needs_command" -f -a "run" -d 'Acquire a lock, run a command while holding it, release it'
complete -c zklock -n "__fish_zklock_needs_command" -f -a "status" -d 'Show who holds a lock and who waits, for people (a table) and scripts (--json, status)'
complete -c zklock -n "__fish_zklock_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c zklock -n "__fish_zklock_using_subcommand run" -s z -l zk -d 'ZooKeeper connect string: host:port[,host:port...][/chroot]' -r
complete -c zklock -n "__fish_zklock_using_subcommand run" -l session-timeout -d 'Requested session timeout; the server may negotiate another, which is what counts' -r
complete -c zklock -n "__fish_zklock_using_subcommand run" -l connect-timeout -d 'Give up if no server answers within this long' -r
complete -c zklock -n "__fish_zklock_using_subcommand run" -l auth-file -d 'Credentials in a file only its owner can read: digest:USER:PASSWORD or sasl-digest:USER:PASSWORD' -r -F
complete -c zklock -n "__fish_zklock_using_subcommand run" -l tls-ca -d 'CA certificate(s) (PEM) that signed the servers\' certificates; connects with TLS' -r -F
complete -c zklock -n "__fish_zklock_using_subcommand run" -l tls-cert -d 'Client certificate (PEM) for mutual TLS; needs --tls-key' -r -F
complete -c zklock -n "__fish_zklock_using_subcommand run" -l tls-key -d 'Private key (PEM) of --tls-cert' -r -F
complete -c zklock -n "__fish_zklock_using_subcommand run" -l acl -d 'ACL of the nodes zklock creates [default: creator+read with credentials, else open]' -r -f -a "open\t'Anyone may read, change and delete (world:anyone:cdrwa)'
creator\t'Only our authenticated identity may read, change or delete (auth::cdrwa)'
creator+read\t'Our identity may do everything, anyone may read: `zklock status` works for all'"
complete -c zklock -n "__fish_zklock_using_subcommand run" -l server-tick -d 'The servers\' tickTime, used in the safety budget' -r
complete -c zklock -n "__fish_zklock_using_subcommand run" -s w -l wait -d 'Give up waiting for the lock after this long; 0s tries once, like --no-wait (default: wait forever)' -r
complete -c zklock -n "__fish_zklock_using_subcommand run" -s E -l conflict-exit-code -d 'Exit status when --no-wait or --wait gives up' -r
complete -c zklock -n "__fish_zklock_using_subcommand run" -l disconnect-threshold -d 'Time without a leader-confirmed heartbeat before the stop signal [default: derived from the safety budget]' -r
complete -c zklock -n "__fish_zklock_using_subcommand run" -l grace -d 'Time between the stop signal and SIGKILL [default: 30% of the budget, at most 5s]' -r
complete -c zklock -n "__fish_zklock_using_subcommand run" -l lock-delay -d 'After a holder vanished without a clean release (session expired, node deleted), wait this long before starting the command; 0s: never [default: the negotiated session timeout]' -r
complete -c zklock -n "__fish_zklock_using_subcommand run" -l kill-signal -d 'Signal that stops the command when the lock is lost: TERM, SIGTERM or 15' -r
complete -c zklock -n "__fish_zklock_using_subcommand run" -l limit -d 'At most N commands hold the lock at once (a semaphore); every participant must give the same N' -r
complete -c zklock -n "__fish_zklock_using_subcommand run" -l timeout -d 'Stop the command (stop signal, grace, SIGKILL) once it has held the lock this long, and exit 123' -r
complete -c zklock -n "__fish_zklock_using_subcommand run" -l min-hold -d 'Keep holding the lock until this long after acquiring it, even if the command ends sooner' -r
complete -c zklock -n "__fish_zklock_using_subcommand run" -l label -d 'Free text stored with the lock node, shown by `zklock status` (at most 4096 bytes)' -r
complete -c zklock -n "__fish_zklock_using_subcommand run" -s n -l no-wait -d 'Give up at once if the lock is held'
complete -c zklock -n "__fish_zklock_using_subcommand run" -l shared -d 'Take the lock shared (a read lock): readers run together, never beside a writer (Curator\'s InterProcessReadWriteLock)'
complete -c zklock -n "__fish_zklock_using_subcommand run" -l write -d 'Take the write side of a read-write lock: alone, never beside a reader or another writer'
complete -c zklock -n "__fish_zklock_using_subcommand run" -s v -l verbose -d 'More messages on stderr (-v: lifecycle, -vv: debug)'
complete -c zklock -n "__fish_zklock_using_subcommand run" -s q -l quiet -d 'Only errors on stderr (status: print nothing, only set the exit status)'
complete -c zklock -n "__fish_zklock_using_subcommand run" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c zklock -n "__fish_zklock_using_subcommand run" -s V -l version -d 'Print version'
complete -c zklock -n "__fish_zklock_using_subcommand status" -s z -l zk -d 'ZooKeeper connect string: host:port[,host:port...][/chroot]' -r
complete -c zklock -n "__fish_zklock_using_subcommand status" -l session-timeout -d 'Requested session timeout; the server may negotiate another, which is what counts' -r
complete -c zklock -n "__fish_zklock_using_subcommand status" -l connect-timeout -d 'Give up if no server answers within this long' -r
complete -c zklock -n "__fish_zklock_using_subcommand status" -l auth-file -d 'Credentials in a file only its owner can read: digest:USER:PASSWORD or sasl-digest:USER:PASSWORD' -r -F
complete -c zklock -n "__fish_zklock_using_subcommand status" -l tls-ca -d 'CA certificate(s) (PEM) that signed the servers\' certificates; connects with TLS' -r -F
complete -c zklock -n "__fish_zklock_using_subcommand status" -l tls-cert -d 'Client certificate (PEM) for mutual TLS; needs --tls-key' -r -F
complete -c zklock -n "__fish_zklock_using_subcommand status" -l tls-key -d 'Private key (PEM) of --tls-cert' -r -F
complete -c zklock -n "__fish_zklock_using_subcommand status" -l format -d 'Output format: a table for people, a versioned JSON document, or Prometheus\' text format' -r -f -a "text\t'A summary line and a table per lock (--recursive: a line per lock)'
json\t'The versioned JSON document'
prometheus\t'The Prometheus text exposition format, for node_exporter\'s textfile collector'"
complete -c zklock -n "__fish_zklock_using_subcommand status" -s o -l output -d 'Write the output to FILE, atomically (a temporary file in the same directory, renamed)' -r -F
complete -c zklock -n "__fish_zklock_using_subcommand status" -l held-longer-than -d 'Only locks held longer than this; exit 2 when any is (an alert)' -r
complete -c zklock -n "__fish_zklock_using_subcommand status" -l waiting-longer-than -d 'Only locks with a waiter waiting longer than this; exit 2 when any has (an alert)' -r
complete -c zklock -n "__fish_zklock_using_subcommand status" -l json -d 'The same as --format json'
complete -c zklock -n "__fish_zklock_using_subcommand status" -s r -l recursive -d 'List every lock below the path, one line each'
complete -c zklock -n "__fish_zklock_using_subcommand status" -l watch -d 'Keep running and print a line each time a holder or queue changes, until interrupted'
complete -c zklock -n "__fish_zklock_using_subcommand status" -s v -l verbose -d 'More messages on stderr (-v: lifecycle, -vv: debug)'
complete -c zklock -n "__fish_zklock_using_subcommand status" -s q -l quiet -d 'Only errors on stderr (status: print nothing, only set the exit status)'
complete -c zklock -n "__fish_zklock_using_subcommand status" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c zklock -n "__fish_zklock_using_subcommand status" -s V -l version -d 'Print version'
complete -c zklock -n "__fish_zklock_using_subcommand help; and not __fish_seen_subcommand_from run status help" -f -a "run" -d 'Acquire a lock, run a command while holding it, release it'
complete -c zklock -n "__fish_zklock_using_subcommand help; and not __fish_seen_subcommand_from run status help" -f -a "status" -d 'Show who holds a lock and who waits, for people (a table) and scripts (--json, status)'
complete -c zklock -n "__fish_zklock_using_subcommand help; and not __fish_seen_subcommand_from run status help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
