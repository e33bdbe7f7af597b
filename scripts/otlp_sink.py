"""An OTLP/HTTP endpoint that accepts every export and keeps nothing: the far end of the gateway's traces when
what is measured is the gateway's own cost of tracing (the shared harness's A/B in docs/performance.md), so no
collector competes with it for the CPU.

    .venv/bin/python scripts/otlp_sink.py --port 4318     # then OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318

It prints the exports and bytes it took when stopped (Ctrl-C or SIGTERM)."""

from __future__ import annotations

import argparse
import asyncio
import signal

_OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"


class Sink:
    def __init__(self) -> None:
        self.exports = 0
        self.bytes = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                await reader.readexactly(length)
                self.exports += 1
                self.bytes += length
                writer.write(_OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args()
    sink = Sink()
    server = await asyncio.start_server(sink.serve, args.host, args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"OTLP sink on http://{args.host}:{args.port}", flush=True)
    async with server:
        await stop.wait()
    print(f"{sink.exports} exports, {sink.bytes} bytes", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
