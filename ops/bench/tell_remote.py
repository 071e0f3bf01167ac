"""tell-remote: tells between actors on two node processes over a real Redis.

figures:
  msgs_per_s   500,000 Pings (100-byte payload) told by sender actors
               (``self.tell``) on one node process to 1,000 sink actors on
               another, round-robin; end to end, from the first send to the
               last message handled by a sink (``time.time()`` on both sides:
               one host, one clock);
  lost         sent - handled, once the sender flushed its transport and
               the receiver said "all received" or the drain deadline passed;
  signed_*     the same run with HMAC-signed envelopes (both nodes hold a
               cluster key: every send is signed, every receipt verified).
baseline: redis-py pipelined PUBLISH -> redis-py subscriber in another
process, same count and payload size, same Redis (``raw_redis``).

Every process is started here (an embedded redis-server, two
``nodeproc.py`` processes, the baseline's subscriber) and ended by PID, also
on error.
"""

from __future__ import annotations

import os
import sys

from common import parse_args, ratio, report
from nodeproc import ScriptedNode
from raw_redis import baseline_publish_throughput

from bus.embedded import EmbeddedRedis
from bus.signing import CLUSTER_KEY_ENV

SENDER_ACTORS = 10
CHUNK = 1_000
PAYLOAD = 100
DRAIN_IDLE = 5.0
"""After the sender flushed: give up waiting once the receiver's count has not
moved for this long (a deadline, checked by asking the receiver)."""
DRAIN_MAX = 120.0
STATS = ("transport", "node", "cpu_seconds", "peak_rss_mb", "thread_cpu_seconds")
"""What each node process reports about itself (kept in the result's meta)."""


BENCH_KEY = "tell-remote-bench-cluster-key-0123456789"


def measure(url: str, n: int, sinks: int, env: dict[str, str] | None = None,
            tag: str = "tell-remote") -> dict[str, float]:
    receiver = sender = None
    try:
        receiver = ScriptedNode("sink", url, "bench-recv", "--actors", str(sinks), env=env)
        sender = ScriptedNode("sender", url, "bench-send", "--actors", str(SENDER_ACTORS),
                             "--targets", str(sinks), "--payload", str(PAYLOAD), env=env)
        receiver.ready()
        sender.ready()
        receiver.send(cmd="expect", n=n)
        receiver.start_profile(tag)
        sender.start_profile(tag)
        sender.send(cmd="start", total=n, chunk=CHUNK)
        sent = sender.expect("event", "sent", timeout=600)
        if not sent["flushed"]:
            print("warning: the sender's transport did not flush in time", file=sys.stderr)
        # Drain: "all-received" from the receiver, or no progress for DRAIN_IDLE.
        outcome = None
        last_count = -1
        waited = 0.0
        while outcome is None and waited < DRAIN_MAX:
            try:
                outcome = receiver.expect("event", "all-received", timeout=DRAIN_IDLE)
            except TimeoutError:
                waited += DRAIN_IDLE
                receiver.send(cmd="report")
                now = receiver.expect("event", "report", timeout=30)
                if now["received"] == last_count:
                    outcome = now
                last_count = now["received"]
        receiver.end_profile()
        sender.end_profile()
        receiver.send(cmd="report")
        final = receiver.expect("event", "report", timeout=30)
        if outcome is None:
            outcome = final
    finally:
        for proc in (sender, receiver):
            if proc is not None:
                proc.stop()
    received = outcome["received"]
    elapsed = max(outcome["last_receipt"] - sent["first_send"], 1e-9)
    return {
        "msgs_per_s": received / elapsed,
        "lost": sent["sent"] - received,
        "sent": sent["sent"],
        "seconds": elapsed,
        "send_seconds": sent["sent_at"] - sent["first_send"],
        "flush_seconds": sent["flushed_at"] - sent["first_send"],
        "_sender_stats": {k: sent[k] for k in STATS},
        "_receiver_stats": {k: final[k] for k in STATS},
    }


def main() -> None:
    args = parse_args("tell-remote", __doc__ or "")
    n = 50_000 if args.quick else 500_000
    sinks = 1_000
    load = os.getloadavg()[0]
    redis = EmbeddedRedis()
    try:
        redis.start()
        huddle = measure(redis.url, n, sinks)
        signed = measure(redis.url, n, sinks, env={CLUSTER_KEY_ENV: BENCH_KEY}, tag="tell-remote-signed")
        base = baseline_publish_throughput(redis.url, n=n, payload_size=PAYLOAD, channels=sinks)
    finally:
        redis.stop()
    sender_stats, receiver_stats = huddle.pop("_sender_stats"), huddle.pop("_receiver_stats")
    signed_received = max(1, signed["sent"] - signed["lost"])
    signed_receiver_cpu = signed["_receiver_stats"]["cpu_seconds"] / signed_received * 1e6
    signed_sender_cpu = signed["_sender_stats"]["cpu_seconds"] / max(1, signed["sent"]) * 1e6
    received = max(1, huddle["sent"] - huddle["lost"])
    notes = {"sender_stats": sender_stats, "receiver_stats": receiver_stats,
             "sender_cpu_us_per_msg": round(sender_stats["cpu_seconds"] / max(1, huddle["sent"]) * 1e6, 2),
             "receiver_cpu_us_per_msg": round(receiver_stats["cpu_seconds"] / received * 1e6, 2),
             "receiver_reconnects": receiver_stats["transport"]["reconnects"],
             "signed_sender_cpu_us_per_msg": round(signed_sender_cpu, 2),
             "signed_receiver_cpu_us_per_msg": round(signed_receiver_cpu, 2),
             "sender_actors": SENDER_ACTORS, "chunk": CHUNK, "sinks": sinks, "loadavg_1m_before": load}
    report(
        args,
        figures={"msgs_per_s": huddle["msgs_per_s"], "lost": huddle["lost"], "tells": n, "sinks": sinks,
                 "payload_bytes": PAYLOAD, "seconds": huddle["seconds"], "send_seconds": huddle["send_seconds"],
                 "signed_msgs_per_s": signed["msgs_per_s"], "signed_lost": signed["lost"],
                 "msgs_per_s_ratio": ratio(huddle["msgs_per_s"], base["msgs_per_s"])},
        baseline={"msgs_per_s": base["msgs_per_s"], "lost": base["lost"], "publishes": n, "channels": sinks,
                  "payload_bytes": PAYLOAD, "seconds": base["seconds"]},
        goal={"msgs_per_s_ratio": 1.0, "lost": 0},
        notes=notes,
    )


if __name__ == "__main__":
    main()
