"""The usage portal: records user servers from the Kubernetes API, turns them into CPU/memory/GPU/NPU hours and
cost, keeps quotas, and serves the limits API the hub's profiles read (store, accounting, collector, app, serve)."""
