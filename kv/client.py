"""KV from outside the lab (``anylab kv``, tests, the bench): a master's or a replica's API over the Unix
socket in its node's run directory. Every call returns the decoded reply or raises KvError with the
API's reason (``status`` set; 404 for a missing key)."""

from __future__ import annotations

import base64
import http.client
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from core import unix_http
from kv.store import KvError


class KvClient:
    def __init__(self, socket: Path, timeout: float = 30.0) -> None:
        self.socket, self.timeout = socket, timeout

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        try:
            status, raw = unix_http.request(str(self.socket), method, path, data,
                                            {"Content-Type": "application/json"}, self.timeout)
        except (OSError, http.client.HTTPException) as exc:
            raise KvError(f"nothing answers on {self.socket} ({exc}): is that node's KV process up?", 503) from None
        try:
            reply: dict[str, Any] = json.loads(raw) if raw else {}
        except ValueError:
            reply = {"error": raw.decode(errors="replace")}
        if status >= 400:
            raise KvError(str(reply.get("error", f"HTTP {status}")), status)
        return reply

    def put(self, ns: str, key: str, value: bytes, metadata: Any = None, expiration: float | None = None,
            expiration_ttl: float | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"key": key, "value": base64.b64encode(value).decode()}
        for name, v in (("metadata", metadata), ("expiration", expiration), ("expiration_ttl", expiration_ttl)):
            if v is not None:
                body[name] = v
        return self.call("POST", f"/v1/kv/{ns}/put", body)

    def delete(self, ns: str, key: str) -> dict[str, Any]:
        return self.call("POST", f"/v1/kv/{ns}/delete", {"key": key})

    def get(self, ns: str, key: str) -> dict[str, Any] | None:
        """``{value (bytes), metadata, expiration, stale}``, or None when the key is absent."""
        try:
            reply = self.call("POST", f"/v1/kv/{ns}/get", {"key": key})
        except KvError as exc:
            if exc.status == 404:
                return None
            raise
        return {**reply, "value": base64.b64decode(reply["value"])}

    def list(self, ns: str, prefix: str = "", limit: int = 1000, cursor: str | None = None) -> dict[str, Any]:
        query = urlencode({"prefix": prefix, "limit": limit, **({"cursor": cursor} if cursor else {})})
        return self.call("GET", f"/v1/kv/{ns}/list?{query}")

    def status(self) -> dict[str, Any]:
        return self.call("GET", "/v1/status")
