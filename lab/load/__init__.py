"""Loads and nemeses: HTTP users, the priority mix and DO clients (programs run in client namespaces),
the overload and breaker runs, and the Durable Object nemesis."""
