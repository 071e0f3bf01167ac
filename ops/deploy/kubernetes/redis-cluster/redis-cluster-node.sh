#!/bin/sh
# Start one node of the fleet's Redis Cluster:
#
#   redis-cluster-node.sh [redis-server arguments...]
#
# runs `redis-server ARGUMENTS` (exec: Redis gets the container's signals)
# after two things plain redis-server cannot do from the command line:
#
# 1. Fix the addresses in nodes.conf. A cluster node remembers its peers by
#    IP address only. Containers and pods get a new address when they are
#    recreated (`docker compose down/up`, a rescheduled pod): a node whose
#    peers all moved finds none of them, and a cluster restarted whole never
#    forms again. Every node is started with a stable DNS name
#    (REDIS_ANNOUNCE_HOSTNAME, which Redis >= 7 keeps in nodes.conf next to
#    each peer's address), so before Redis starts, every peer's address is
#    looked up again by that name and replaced when it changed. A name that
#    does not resolve yet keeps its old address; that peer fixes the link
#    itself when it starts and meets us (Redis updates a known node's
#    address when it hears from it).
# 2. Authenticate replication. A replica syncs from its primary as the ACL
#    user `ops` (ops/deploy/init-secrets.sh makes it; `huddle` may not, it
#    has no @admin and so no PSYNC). Its password is read from the file
#    REDIS_OPS_PASSWORD_FILE and handed to redis-server on its standard
#    input (config from stdin, `-` as the last argument), never on a command
#    line or in an environment variable.
#
# Environment:
#   REDIS_ANNOUNCE_HOSTNAME  this node's stable DNS name (required)
#   REDIS_ANNOUNCE_IP        this node's address, when the platform knows it
#                            (a pod's status.podIP); also announced to peers
#   REDIS_OPS_PASSWORD_FILE  file holding the `ops` user's password (required)
#
# The data directory is redis-server's --dir if given, else the working
# directory (the image's /data); nodes.conf is --cluster-config-file there.
# POSIX sh, getent, awk: what the redis:7.2-alpine image has.
set -eu

: "${REDIS_ANNOUNCE_HOSTNAME:?the node's stable DNS name}"
: "${REDIS_OPS_PASSWORD_FILE:?the file with the ops user's password}"

dir=$PWD
nodes_conf=nodes.conf
previous=
for arg in "$@"; do
    case $previous in
        --dir) dir=$arg ;;
        --cluster-config-file) nodes_conf=$arg ;;
    esac
    previous=$arg
done
case $nodes_conf in
    /*) ;;
    *) nodes_conf=$dir/$nodes_conf ;;
esac

log() {
    echo "redis-cluster-node: $*" >&2
}

# The first address a name resolves to; nothing when it does not (yet).
resolve() {
    getent hosts "$1" 2>/dev/null | awk 'NR == 1 { print $1 }' || true
}

# nodes.conf, one line per node: <id> <ip>:<port>@<cport>[,<hostname>[,<aux>...]] <flags> ...
# and a last `vars ...` line. Rewrites <ip> where <hostname> now resolves
# elsewhere; the line of this node itself (flag `myself`) takes
# REDIS_ANNOUNCE_IP when it is set.
fix_addresses() {
    conf=$1
    tmp=$conf.addresses
    changed=0
    : > "$tmp"
    while IFS= read -r line; do
        set -f
        # split the line into its fields (no globbing: slot ranges hold brackets)
        set -- $line
        set +f
        if [ $# -ge 3 ] && [ "$1" != vars ]; then
            address=$2
            case $address in
                *,*)
                    extra=${address#*,}
                    hostname=${extra%%,*}
                    hostport=${address%%@*}
                    old_ip=${hostport%:*}
                    new_ip=
                    case ",$3," in
                        *,myself,*) new_ip=${REDIS_ANNOUNCE_IP:-} ;;
                    esac
                    if [ -z "$new_ip" ] && [ -n "$hostname" ]; then
                        new_ip=$(resolve "$hostname")
                    fi
                    if [ -n "$new_ip" ] && [ "$new_ip" != "$old_ip" ]; then
                        log "nodes.conf: $hostname ($1) moved from $old_ip to $new_ip"
                        id=$1
                        shift 2
                        line="$id $new_ip${address#"$old_ip"} $*"
                        changed=1
                    fi
                    ;;
            esac
        fi
        printf '%s\n' "$line" >> "$tmp"
    done < "$conf"
    if [ "$changed" = 1 ]; then
        mv "$tmp" "$conf"
    else
        rm -f "$tmp"
    fi
}

if [ -s "$nodes_conf" ]; then
    if command -v getent > /dev/null 2>&1; then
        fix_addresses "$nodes_conf"
    else
        log "no getent here: the addresses in $nodes_conf are kept as they are"
    fi
fi

set -- "$@" --cluster-announce-hostname "$REDIS_ANNOUNCE_HOSTNAME"
if [ -n "${REDIS_ANNOUNCE_IP:-}" ]; then
    set -- "$@" --cluster-announce-ip "$REDIS_ANNOUNCE_IP"
fi
ops_password=$(cat "$REDIS_OPS_PASSWORD_FILE")
exec redis-server "$@" - <<EOF
masteruser ops
masterauth $ops_password
EOF
