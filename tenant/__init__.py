"""Tenant code: the API a deployed worker sees (:mod:`tenant.worker_api`), the isolates it runs in and the
limits they hold it to (:mod:`tenant.isolate`), and a deployment's description (:mod:`tenant.deployment`).
Used by the PoP servers' edge workers, the DO hosts and the control plane (which checks uploads)."""
