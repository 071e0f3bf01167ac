#!/bin/sh
# Is this Redis Cluster node fit to serve (the readiness probe)?
#
#   redis-cluster-ready.sh [PORT]
#
# Exit 0 when the node sees `cluster_state:ok` and, if it is a replica, its
# link to its primary is up (it finished syncing). A rolling restart waits
# for that on each pod before it restarts the next, so a primary is never
# restarted while the replica that would take over is still copying it.
# Before the cluster is created (see create-cluster.sh) no node is ready.
#
# Asks as the ACL user `ops` (CLUSTER INFO and INFO are beyond `probe`,
# which may only PING); password from the file REDIS_OPS_PASSWORD_FILE.
set -eu

: "${REDIS_OPS_PASSWORD_FILE:?the file with the ops user's password}"
REDISCLI_AUTH=$(cat "$REDIS_OPS_PASSWORD_FILE")
export REDISCLI_AUTH
port=${1:-6379}

ask() {
    redis-cli --no-auth-warning --user ops -h 127.0.0.1 -p "$port" "$@" | tr -d '\r'
}

cluster=$(ask cluster info)
case $cluster in
    *cluster_state:ok*) ;;
    *) echo "not ready: $(printf '%s\n' "$cluster" | grep '^cluster_state:' || echo "$cluster")"; exit 1 ;;
esac
replication=$(ask info replication)
case $replication in
    *role:master*) exit 0 ;;
    *master_link_status:up*) exit 0 ;;
    *) echo "not ready: replica not in sync ($(printf '%s\n' "$replication" | grep '^master_link_status:'))"; exit 1 ;;
esac
