#!/bin/sh
# Make the secrets of one huddle fleet: Redis passwords (one for the fleet,
# one for operators), the Redis ACL file that holds their hashes, the
# REDIS_URL every node and tool uses, and the cluster key nodes sign
# envelopes with.
#
#   ops/deploy/init-secrets.sh OUTDIR REDIS_HOST[:PORT]
#
# writes (bus.env and cluster.key readable by the caller only):
#   OUTDIR/users.acl    Redis --aclfile: `default` off; `huddle` for nodes and
#                       tools; `ops` for people (everything, incl. CONFIG,
#                       SLOWLOG, CLIENT LIST); `probe` (PING only, no
#                       password) for health checks. Passwords as SHA-256
#                       hashes only, so mode 0644
#   OUTDIR/bus.env      REDIS_URL=redis://huddle:<password>@REDIS_HOST:PORT/0
#   OUTDIR/cluster.key  one random key (huddle --cluster-key-file)
#   OUTDIR/ops.password the `ops` user's password (redis-cli --user ops --askpass)
#
# It never overwrites: an existing file is kept and the script stops, so a
# second run cannot rotate a running fleet's secrets by accident. For key
# rotation see ops/RUNBOOK.md. Needs only POSIX sh, od and sha256sum.
set -eu

usage() {
    echo "usage: $0 OUTDIR REDIS_HOST[:PORT]" >&2
    exit 2
}

[ $# -eq 2 ] || usage
outdir=$1
case $2 in
    *:*) redis_host=${2%:*}; redis_port=${2##*:} ;;
    *) redis_host=$2; redis_port=6379 ;;
esac
[ -n "$redis_host" ] || usage

umask 077
mkdir -p "$outdir"
for name in users.acl bus.env cluster.key ops.password; do
    if [ -e "$outdir/$name" ]; then
        echo "$outdir/$name exists; not overwriting (delete it first to make new secrets)" >&2
        exit 1
    fi
done

# 32 random bytes as 64 hex digits: safe in a URL, no escaping anywhere.
random_hex() {
    od -An -tx1 -N32 /dev/urandom | tr -d ' \n'
}

sha256_hex() {
    printf '%s' "$1" | sha256sum | cut -d' ' -f1
}

password=$(random_hex)
ops_password=$(random_hex)

# huddle: every key and channel; no administration (CONFIG, SHUTDOWN,
# MONITOR, ACL, DEBUG...) and no FLUSHALL/FLUSHDB. CLIENT SETNAME is given
# back because Redis 6.2 files CLIENT under @admin and nodes name their
# connections. ops: everything, for a person at redis-cli.
cat > "$outdir/users.acl" <<EOF
user default off
user huddle on #$(sha256_hex "$password") ~* &* +@all -@admin -flushall -flushdb +client|setname
user ops on #$(sha256_hex "$ops_password") ~* &* +@all
user probe on nopass -@all +ping
EOF

# Only SHA-256 hashes of random 256-bit passwords are in it: readable by all,
# so Redis can read it as its own user when the file is bind-mounted.
chmod 0644 "$outdir/users.acl"

printf 'REDIS_URL=redis://huddle:%s@%s:%s/0\n' "$password" "$redis_host" "$redis_port" > "$outdir/bus.env"
random_hex > "$outdir/cluster.key"
echo >> "$outdir/cluster.key"
printf '%s\n' "$ops_password" > "$outdir/ops.password"

echo "wrote $outdir/users.acl, $outdir/bus.env, $outdir/cluster.key, $outdir/ops.password"
