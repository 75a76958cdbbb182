"""Durable Objects (issue 6): single owner per object, replicated storage, fencing; the history checker."""
