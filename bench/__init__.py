"""Benchmarks of tcpmq against real peers, all measured in one run: `bench/run`.

Servers: tcpmq (durable default and `--fsync never`), tcpmq on a shared Redis
store (one node on Redis appendfsync always or in memory, two nodes on one
Redis), Redis 7 (in memory and `appendfsync always`), NATS JetStream (file
storage, default sync and `sync_interval: always`) and a null broker
(servers.py, nullbroker.py); redis_ceiling.py measures Redis's own cost per
operation.
Each server runs pinned to core 0; the load generator (loadgen.py, one
uvloop process) on core 1 talks raw wire protocol to each (peers/), with
publish commands encoded before the clock starts, pipelined in a bounded
window, and replies counted without parsing; consumers parse every message.

Scenarios (scenarios.py), 100-byte payloads:

- S1: 1 publisher → 1 channel → 1 consumer pulling batches of 100 and acking;
  deliveries/s from the first publish to the last delivery.
- S2: the same with 8 queues on the channel (fan-out), one consumer each.
- S3: 5,000 msg/s for 5 s, one consumer long-polling; publish-to-delivery
  p50/p99/max.
- S4: 1,000,000 messages queued to one consumer, never pulled: server RSS
  growth per message; then the time a restart takes with that backlog.
- S5: 5,000 idle authenticated connections: RSS each; then 1,000 of them each
  publish one message and pull one (long-poll) 10 times a second for 5 s, all
  on one queue: deliveries/s, publish-to-delivery p99, failed connections.
- S6: 1 and then 16 publishers, each waiting for its reply before the next:
  acknowledged publishes/s.

report.py prints the medians, the ratios to every peer and the goals, and
writes them to bench/RESULTS.md.
"""
