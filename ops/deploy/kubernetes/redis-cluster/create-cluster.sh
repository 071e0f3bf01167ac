#!/bin/sh
# Form the fleet's Redis Cluster from its nodes, once:
#
#   create-cluster.sh HOST:PORT HOST:PORT HOST:PORT HOST:PORT HOST:PORT HOST:PORT
#
# 1. Waits until every node answers (a restarted node replays its AOF first).
# 2. If every node already reports `cluster_state:ok`: nothing to do, exit 0.
#    This is the usual case: the script runs on every `docker compose up`
#    and every time the Kubernetes Job is applied again.
# 3. If no node knows another or holds a slot (a new cluster):
#    `redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes`
#    (three primaries with one replica each for six nodes).
#    Otherwise (a cluster that exists but is not whole yet, e.g. nodes
#    restarting after a failover) it creates nothing and only waits.
# 4. Waits until every node reports `cluster_state:ok` and
#    `redis-cli --cluster check` passes, prints the check, exits 0; past
#    CREATE_TIMEOUT_S (default 600) exits 1 with what the nodes say.
#
# Talks to the nodes as the ACL user `ops` (ops/deploy/init-secrets.sh makes
# it; forming a cluster takes admin commands), password from the file
# REDIS_OPS_PASSWORD_FILE. POSIX sh, timeout and redis-cli (Redis >= 7).
set -eu

if [ $# -lt 6 ]; then
    echo "usage: $0 HOST:PORT x6 (or more: one replica per primary)" >&2
    exit 2
fi
: "${REDIS_OPS_PASSWORD_FILE:?the file with the ops user's password}"
REDISCLI_AUTH=$(cat "$REDIS_OPS_PASSWORD_FILE")
export REDISCLI_AUTH
deadline=$(($(date +%s) + ${CREATE_TIMEOUT_S:-600}))

log() {
    echo "create-cluster: $*"
}

ask() {
    node=$1
    shift
    redis-cli --no-auth-warning --user ops -h "${node%:*}" -p "${node##*:}" "$@" 2>&1 | tr -d '\r'
}

# One field of a node's CLUSTER INFO (nothing if the node does not answer).
cluster_info() {
    ask "$1" cluster info | sed -n "s/^$2://p"
}

wait_a_moment() {
    if [ "$(date +%s)" -ge "$deadline" ]; then
        log "gave up after ${CREATE_TIMEOUT_S:-600} s: $*"
        for node in $nodes; do
            log "$node: $(ask "$node" cluster info | grep -E '^cluster_(state|slots_assigned|known_nodes):' | tr '\n' ' ')"
        done
        exit 1
    fi
    sleep 1
}

all_ok() {
    for node in $nodes; do
        [ "$(cluster_info "$node" cluster_state)" = ok ] || return 1
    done
}

nodes=$*

for node in $nodes; do
    until [ "$(ask "$node" ping)" = PONG ]; do
        wait_a_moment "$node does not answer PING"
    done
done
log "every node answers: $nodes"

if all_ok; then
    log "cluster_state:ok on every node: the cluster exists, nothing to do"
    exit 0
fi

formed=no
for node in $nodes; do
    known=$(cluster_info "$node" cluster_known_nodes)
    assigned=$(cluster_info "$node" cluster_slots_assigned)
    if [ "${known:-1}" -gt 1 ] || [ "${assigned:-0}" -gt 0 ]; then
        formed=yes
        log "$node already belongs to a cluster ($known nodes known, $assigned slots assigned)"
    fi
done

if [ "$formed" = no ]; then
    log "no node belongs to a cluster yet: creating it"
    # redis-cli waits for the nodes to meet without a limit (forever when
    # the cluster bus port, 16379, is blocked between them): bound it.
    remaining=$((deadline - $(date +%s)))
    # one argument per node
    timeout "$((remaining > 1 ? remaining : 1))" \
        redis-cli --no-auth-warning --user ops --cluster create $nodes --cluster-replicas 1 --cluster-yes
else
    log "not creating anything: waiting for the existing cluster to be whole"
fi

# The check also wants every node to agree on the slot map, which gossip
# settles a moment after the states turn ok.
first=${nodes%% *}
until all_ok && report=$(redis-cli --no-auth-warning --user ops --cluster check "$first" 2>&1); do
    wait_a_moment "cluster_state is not ok on every node, or redis-cli --cluster check fails"
done
printf '%s\n' "$report"
log "cluster_state:ok on every node"
