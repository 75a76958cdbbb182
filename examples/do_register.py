"""A worker with a Durable Object class: registers and counters, one object per name.

Deploy: ``anylab deploy reg examples/do_register.py --do REG=Register``; then from a client:
``POST /do/NAME[?hint=REGION]`` with ``{"f": "read"|"write"|"cas"|"incr", "value": …}`` →
``{"value": …, "owner": REGION, "epoch": N}``; 503 ``{"error", "definite"}`` when the object could not
be reached (``definite``: the operation certainly did not happen).
"""

import json
from typing import Any

from tenant.worker_api import DurableObjectError, Request


class Register:
    """``read`` → the value; ``write`` v; ``cas`` [old, new] → true/false; ``incr`` n → the new total."""

    def __init__(self, state: Any, env: Any) -> None:
        self.storage = state.storage

    async def fetch(self, request: Request) -> Any:
        op = json.loads(request.body or b"{}")
        f, arg = op.get("f"), op.get("value")
        if f == "read":
            return json.dumps(await self.storage.get("v"))
        if f == "write":
            await self.storage.put("v", arg)
            return "null"
        if f == "cas":
            if await self.storage.get("v") != arg[0]:
                return "false"
            await self.storage.put("v", arg[1])
            return "true"
        if f == "incr":
            total = (await self.storage.get("v") or 0) + arg
            await self.storage.put("v", total)
            return json.dumps(total)
        return {"status": 400, "body": f"unknown operation {f!r}\n"}


async def fetch(request: Request, env: Any, ctx: Any) -> Any:
    path, _, query = request.url.partition("?")
    name = path.rsplit("/", 1)[-1]
    hint = dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("hint")
    stub = env.REG.get(env.REG.id_from_name(name), location_hint=hint)
    try:
        answer = await stub.fetch(Request("POST", "/", {}, request.body))
    except DurableObjectError as exc:
        return {"status": 503, "headers": {"content-type": "application/json"},
                "body": json.dumps({"error": str(exc), "definite": exc.definite})}
    if answer.status != 200:
        return answer
    return {"status": 200, "headers": {"content-type": "application/json"},
            "body": json.dumps({"value": json.loads(answer.body), "owner": answer.headers["x-do-owner"],
                                "epoch": int(answer.headers["x-do-epoch"])})}
