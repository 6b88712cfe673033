"""Service networking on a node: service discovery (DNS), load balancing (VIPs and the ingress routing mesh)."""
