"""``Upstream.open`` on its own: over ``FastTransport`` it encodes the request itself (no ``httpx.Request``); the
upstream must see the same request as through httpx's own machinery — path, host, headers, body — and the
connection is reused as before."""

from __future__ import annotations

import asyncio

import httpx

from app.core.settings import Settings
from app.upstream.client import Upstream
from app.upstream.transport import FastTransport
from tests.fakes.scripted import Conn, Request, ScriptedServer, response, serve_forever


def test_the_upstream_sees_the_same_request_as_through_httpx() -> None:
    seen: list[Request] = []

    async def record(conn: Conn, request: Request) -> None:
        seen.append(request)
        conn.write(response(body=b'{"ok": true}', headers="content-type: application/json\r\n"))

    async def case() -> None:
        async with ScriptedServer(lambda c: serve_forever(c, record)) as server:
            settings = Settings(_env_file=None, upstream_api_key="up-key")  # type: ignore[call-arg]
            fast = Upstream(settings, base_url=server.url)
            assert isinstance(fast.transport, FastTransport)
            plain = Upstream(settings, base_url=server.url)
            plain.transport = httpx.AsyncHTTPTransport()  # the reference: httpx builds and sends the request
            for upstream in (fast, plain):
                for content_type in (None, "multipart/form-data; boundary=x"):
                    answer = await upstream.open("chat", b'{"model": "m"}', content_type,
                                                 [("x-request-id", "r-1"), ("traceparent", "00-ab-cd-01")])
                    assert answer.status_code == 200 and await answer.aread() == b'{"ok": true}'
                    await answer.aclose()
            await fast.aclose()
            await plain.aclose()
            assert len(server.connections) == 2  # one connection each: the fast one reused for its second request

    asyncio.run(asyncio.wait_for(case(), 20))
    assert len(seen) == 4
    for ours, reference in ((seen[0], seen[2]), (seen[1], seen[3])):
        assert (ours.method, ours.target, ours.body) == (reference.method, reference.target, reference.body)
        assert ours.target == "/catalogs/local/v1/chat/completions"  # Foundry Local (the default kind)
        assert {k.lower(): v for k, v in ours.headers.items()} == \
            {k.lower(): v for k, v in reference.headers.items()}
    assert seen[0].headers.get("content-type", seen[0].headers.get("Content-Type")) == "application/json"
