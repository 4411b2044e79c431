"""Publishes, with nats-py, the payloads three log shippers send to NATS, byte for byte
in their shapes:

- Fluent Bit's `nats` output: a JSON array of [timestamp, {record}] pairs per flush, the
  record carrying the tag, published on the tag as subject;
- Vector's `nats` sink with the `json` codec: one event object per message;
- Telegraf's `nats` output with the `json` data format: one metric, then a batch.

Prints how many events it sent, as JSON.
"""

import argparse
import asyncio
import json

import nats


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    args = p.parse_args()
    nc = await nats.connect(args.url)
    sent = 0

    # Fluent Bit: two flushes of three records from a tail input.
    for flush in range(2):
        records = [
            [1780000000 + flush * 3 + i, {"tag": "logs.fluent.app", "log": f"GET /item/{flush * 3 + i} 200", "stream": "stdout"}]
            for i in range(3)
        ]
        await nc.publish("logs.fluent.app", json.dumps(records, separators=(",", ":")).encode())
        sent += len(records)

    # Vector: one message per event.
    for i in range(4):
        event = {
            "file": "/var/log/app.log",
            "host": "web-1",
            "message": f"ERROR: request {i} failed",
            "source_type": "file",
            "timestamp": f"2026-06-01T10:00:0{i}.500000Z",
        }
        await nc.publish("logs.vector.app", json.dumps(event).encode())
        sent += 1

    # Telegraf: one metric, then a batch of two.
    metric = {"fields": {"usage_idle": 91.5, "usage_user": 4.25}, "name": "cpu", "tags": {"cpu": "cpu0", "host": "db-1"}, "timestamp": 1780000100}
    await nc.publish("logs.telegraf", json.dumps(metric).encode())
    batch = {"metrics": [dict(metric, timestamp=1780000110), dict(metric, name="mem", fields={"used_percent": 40.0}, timestamp=1780000120)]}
    await nc.publish("logs.telegraf", json.dumps(batch).encode())
    sent += 3

    await nc.flush()
    await nc.close()
    print(json.dumps({"sent": sent}))


if __name__ == "__main__":
    asyncio.run(main())
