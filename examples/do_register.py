"""A worker with a Durable Object class: registers and counters, one object per name.

Deploy: ``anylab deploy reg examples/do_register.py --do REG=Register``; then from a client:
``POST /do/NAME[?hint=REGION]`` with ``{"f": "read"|"write"|"cas"|"incr", "value": …}`` →
``{"value": …, "version": N, "owner": REGION, "epoch": N}``; 503 ``{"error", "definite"}`` when the
object could not be reached (``definite``: the operation certainly did not happen). ``version`` counts the
changes the object has made (each write, successful cas or increment adds one), as the object sees it
now: two acknowledged changes never share one unless a change was lost.
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
        # The value and its version in one key: one put changes both, or neither.
        state = await self.storage.get("s") or {"v": None, "n": 0}
        value, version = state["v"], state["n"]
        if f == "read":
            return json.dumps({"result": value, "version": version})
        if f == "write":
            result, new = None, arg
        elif f == "cas":
            if value != arg[0]:
                return json.dumps({"result": False, "version": version})
            result, new = True, arg[1]
        elif f == "incr":
            new = (value or 0) + arg
            result = new
        else:
            return {"status": 400, "body": f"unknown operation {f!r}\n"}
        await self.storage.put("s", {"v": new, "n": version + 1})
        return json.dumps({"result": result, "version": version + 1})


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
    done = json.loads(answer.body)
    return {"status": 200, "headers": {"content-type": "application/json"},
            "body": json.dumps({"value": done["result"], "version": done["version"],
                                "owner": answer.headers["x-do-owner"], "epoch": int(answer.headers["x-do-epoch"])})}
