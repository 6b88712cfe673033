"""A daemon's Prometheus metrics (`shoal daemon --metrics-addr`): collectors that read the store, Raft and the
membership at scrape time, the few histograms fed as things happen (API requests, Raft proposals and
snapshots), and the HTTP endpoint serving them. The list and what to alert on: docs/metrics.md."""
