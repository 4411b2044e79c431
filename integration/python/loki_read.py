"""Reads from Gossamer's Loki API with loki-reader-core (PyPI), a Loki query client:
a range log query with a line filter, an instant metric query, labels, label values,
series, and its own app/severity lookup (which finds the labels through the label and
series routes). Prints what it got, as JSON, for the test to check.
"""

import argparse
import json

from loki_reader_core import LokiClient


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--start", type=int, required=True)
    p.add_argument("--end", type=int, required=True)
    args = p.parse_args()
    out = {}
    with LokiClient(args.url) as c:
        r = c.query_range('{app="apache"} |= "error"', start=args.start, end=args.end, limit=5000)
        out["error_lines"] = [e.message for s in r.streams for e in s.entries]
        out["error_streams"] = [s.labels for s in r.streams]
        m = c.query('sum by (level) (count_over_time({app="apache"}[2h]))')
        out["by_level"] = {s.labels.get("level", ""): s.samples[-1].value for s in m.metric_series}
        out["labels"] = c.get_labels(start=args.start, end=args.end)
        out["apps"] = c.get_label_values("app", start=args.start, end=args.end)
        out["series"] = c.get_series(match=['{app="zookeeper"}'], start=args.start, end=args.end)
        sev = c.query(app="zookeeper", severity="error", limit=5000, since_hours=3)
        out["zookeeper_errors"] = sum(len(s.entries) for s in sev.streams)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
