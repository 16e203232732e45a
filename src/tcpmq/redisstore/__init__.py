"""The `redis` store: broker nodes that keep no state of their own, sharing one
Redis or Redis Cluster (see docs/redis-design.md)."""
