"""Follows Gossamer's Loki live tail with the `websockets` client (PyPI), as Grafana's
Explore "Live" follows Loki: connects to /loki/api/v1/tail, prints "ready" once the
first frame (the lines already stored) has come, then reads frames until it holds
--want lines, and prints every line it got, as JSON.
"""

import argparse
import asyncio
import json
import sys
import urllib.parse

from websockets.asyncio.client import connect


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--query", required=True)
    p.add_argument("--start", required=True)
    p.add_argument("--want", type=int, required=True)
    args = p.parse_args()
    qs = urllib.parse.urlencode({"query": args.query, "start": args.start, "limit": 1000})
    url = args.url.replace("http://", "ws://") + "/loki/api/v1/tail?" + qs
    lines, labels = [], []
    async with connect(url) as ws:
        first = True
        while len(lines) < args.want:
            frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=60))
            for s in frame["streams"]:
                labels.append(s["stream"])
                lines.extend(v[1] for v in s["values"])
            if first:
                print("ready", flush=True)
                first = False
    print(json.dumps({"lines": lines, "labels": labels}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
