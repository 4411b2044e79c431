"""A queue subscriber written with nats-py, a NATS client Gossamer does not contain.

Binds to a queue's durable consumer on the NOTIFY stream, fetches deliveries, acks
them (naking the first delivery of every K-th event, or every delivery with
--nak-all), and prints what it saw as JSON: for each event id acked, the delivery
count it was acked at; the ids it naked; how many acks repeated an id.
"""

import argparse
import asyncio
import json
import time

import nats
from nats.errors import TimeoutError as NatsTimeout


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--stream", required=True)
    p.add_argument("--consumer", required=True)
    p.add_argument("--expect", type=int, required=True, help="stop once this many distinct events are acked")
    p.add_argument("--nak-every", type=int, default=0, help="nak the first delivery of every K-th event")
    p.add_argument(
        "--nak-all",
        action="store_true",
        help="nak every delivery, pulling until --timeout (the server moves a message past max_deliver only when someone pulls)",
    )
    p.add_argument("--timeout", type=float, default=60.0)
    a = p.parse_args()

    nc = await nats.connect(a.url)
    js = nc.jetstream()
    sub = await js.pull_subscribe_bind(a.consumer, a.stream)
    acked: dict[str, int] = {}
    naked: list[str] = []
    repeats = 0
    deliveries = 0
    first_seen = 0
    deadline = time.monotonic() + a.timeout
    while time.monotonic() < deadline:
        if not a.nak_all and len(acked) >= a.expect:
            break
        try:
            msgs = await sub.fetch(200, timeout=1)
        except (NatsTimeout, asyncio.TimeoutError):
            continue
        for m in msgs:
            deliveries += 1
            event = json.loads(m.data)
            eid = event["id"]
            delivered = m.metadata.num_delivered
            if a.nak_all:
                await m.nak()
                continue
            if delivered == 1:
                first_seen += 1
                if a.nak_every and first_seen % a.nak_every == 0:
                    naked.append(eid)
                    await m.nak()
                    continue
            if eid in acked:
                repeats += 1
            acked[eid] = delivered
            await m.ack()
        await nc.flush()
    await nc.flush()
    await nc.close()
    print(json.dumps({"acked": acked, "naked": naked, "repeats": repeats, "deliveries": deliveries}))


if __name__ == "__main__":
    asyncio.run(main())
