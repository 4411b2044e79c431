"""Indexes documents into Gossamer's Elasticsearch door with a real client of that
protocol: `elasticsearch` (Elastic's Python client, its `helpers.bulk`) or
`opensearch-py` (its `helpers.bulk`). One document of the set is bad (its timestamp is
not a time). Prints what the client reports, as JSON.
"""

import argparse
import json


def documents(index: str, count: int, prefix: str):
    for i in range(count):
        yield {
            "_index": index,
            "_id": f"{prefix}-{i}",
            "_source": {
                "@timestamp": f"2026-06-01T10:{i // 60 % 60:02d}:{i % 60:02d}.000Z",
                "message": f"{prefix} document {i} from the bulk helper",
                "level": "error" if i % 10 == 0 else "info",
                "host": {"name": "web-1"},
                "id": i,
            },
        }
    yield {"_index": index, "_id": f"{prefix}-bad", "_source": {"@timestamp": "not a time", "message": "bad"}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--client", choices=["elasticsearch", "opensearch"], required=True)
    p.add_argument("--index", required=True)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--token")
    args = p.parse_args()
    out = {}
    if args.client == "elasticsearch":
        from elasticsearch import Elasticsearch, helpers

        auth = {"basic_auth": ("elastic", args.token)} if args.token else {}
        client = Elasticsearch(args.url, **auth)
        out["version"] = client.info()["version"]["number"]
    else:
        from opensearchpy import OpenSearch, helpers

        auth = {"http_auth": ("admin", args.token)} if args.token else {}
        client = OpenSearch(hosts=[args.url], **auth)
    ok, errors = helpers.bulk(client, documents(args.index, args.count, args.client), raise_on_error=False, chunk_size=40)
    out["ok"] = ok
    out["errors"] = errors
    print(json.dumps(out))


if __name__ == "__main__":
    main()
