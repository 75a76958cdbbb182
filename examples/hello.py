"""The smallest worker: says hello, and which PoP answered (the demo deploys the same).

Deploy: ``anylab deploy hello examples/hello.py --var GREETING=hi``; then from a client:
``anylab exec c1 -- curl -s -H 'Host: hello.example' http://203.0.113.1/``.
"""

from typing import Any


async def fetch(request: Any, env: Any, ctx: Any) -> str:
    return f"{getattr(env, 'GREETING', 'hello')} from the edge\n"
