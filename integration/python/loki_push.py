"""Logs through python-logging-loki (PyPI), the handler Python services use to push to
Loki (JSON), and then sends one gzip-encoded JSON push with the standard library, as
shippers that compress do. Prints how many lines were sent, as JSON.
"""

import argparse
import gzip
import json
import logging
import time
import urllib.request

import logging_loki


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    args = p.parse_args()
    push = f"{args.url}/loki/api/v1/push"
    handler = logging_loki.LokiHandler(url=push, tags={"application": "py-app"}, version="1")
    log = logging.getLogger("py-app")
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    for i in range(6):
        if i % 3 == 0:
            log.warning("cache miss %d", i)
        else:
            log.info("request %d served", i)
    now = time.time_ns()
    body = {"streams": [{"stream": {"job": "gz-job", "level": "error"}, "values": [[str(now + i), f"compressed line {i}", {"trace_id": f"t{i}"}] for i in range(4)]}]}
    req = urllib.request.Request(push, data=gzip.compress(json.dumps(body).encode()), method="POST")
    req.add_header("Content-Type", "application/json")
    req.add_header("Content-Encoding", "gzip")
    with urllib.request.urlopen(req) as r:
        assert r.status == 204, r.status
    print(json.dumps({"sent": 10}))


if __name__ == "__main__":
    main()
