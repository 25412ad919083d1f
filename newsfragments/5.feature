Idle upstream connections are pooled and reused (with warm-up, caps and a bounded wait queue), and `--strategy` chooses among random, round-robin, least-connections and p2c, with `--upstream-weight`.
