"""Rebuilding a streamed tool call: CPU and wall time for 5, 20 and 50 KB of arguments in 4-character pieces.

Agents that write files through tool calls send arguments of tens of KB; the gateway rebuilds them chunk by
chunk on the event loop, so the cost must grow linearly with the size (issue 22: the old scanner re-read the
whole buffer per chunk, 12.9 s of CPU for 50 KB). Run: ``make bench-toolcalls`` (or this script with
``--module FILE`` to time another implementation of ``ToolCallChunks`` the same way).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from typing import Any


def chunks(size: int, piece: int = 4) -> list[dict[str, Any]]:
    content = "x" * (size - 60)
    text = '<tool_call>{"name": "write_file", "arguments": ' + json.dumps({"path": "a.txt", "content": content}) + \
        "}</tool_call>"
    return [{"id": "c", "object": "chat.completion.chunk",
             "choices": [{"index": 0, "delta": {"content": text[i:i + piece]}, "finish_reason": None}]}
            for i in range(0, len(text), piece)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--module", help="a file defining ToolCallChunks (default: app.openai.toolcalls)")
    args = parser.parse_args()
    if args.module:
        spec = importlib.util.spec_from_file_location("candidate", args.module)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        rewriter = module.ToolCallChunks
    else:
        from app.openai.toolcalls import ToolCallChunks as rewriter
    print("| arguments | pieces | wall s | CPU s | µs CPU per piece |")
    print("|---:|---:|---:|---:|---:|")
    for size in (5_000, 20_000, 50_000):
        pieces = chunks(size)
        rebuilt = rewriter()
        wall, cpu = time.perf_counter(), time.process_time()
        for chunk in pieces:
            rebuilt.chunk(chunk)
        rebuilt.chunk({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"| {size // 1000} KB | {len(pieces):,} | {wall:.3f} | {cpu:.3f} | {cpu / len(pieces) * 1e6:.1f} |")


if __name__ == "__main__":
    main()
