"""Loads and nemeses: HTTP users, the priority mix and DO clients (programs run in client namespaces),
the overload and breaker runs, and the Durable Object nemesis."""

#: The longest a load tool runs (it stops by itself then): a chaos soak's longest, 4 h, with its warm-up and
#: wind-down (lab.measure.chaos checks that it fits).
MAX_LOAD_S = 5 * 3600.0
