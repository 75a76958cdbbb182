"""Replicated KV: regional masters (multi-master, LWW by HLC), PoP replicas, Workers KV semantics."""
