"""Measurements that are not jobs: speed against AR and peers, round and sharding timings,
and each verifier's gap to the optimal-transport bound. Each module runs as
``python -m experiments.bench.NAME``."""
