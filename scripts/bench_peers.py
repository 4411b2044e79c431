#!/usr/bin/env python3
"""The query mix of `gossamer bench query` in one peer engine, on the bench's own events.

    python3 bench_peers.py SYSTEM EVENTS.ndjson WORKDIR RUNS

SYSTEM is `chdb` (embedded ClickHouse: a MergeTree ordered by stream and time, typed
columns, a token index on the message) or `tantivy` (the search library under Quickwit:
the message tokenized, the rest as fast fields). The events are the NDJSON lines the
bench wrote (id, ts in ns, stream, level, message, labels.{dataset,component},
fields.{event_id,latency_ms}); everything of each event is kept, so `Q1 newest 100`
returns whole events. One JSON object goes to stdout: the load time, the bytes under
WORKDIR, this process's peak resident memory, and per query the p50 and p99 over RUNS
timed runs (after one warm-up) with the answer (a count, or how many rows or groups).

`gossamer bench query --peers` runs this once per system, each in its own process (so
each peak memory is its engine's alone), from a virtual environment under `target/`.
"""
import json
import os
import sys
import time

Q1_STREAM, Q1_WORD = "loghub.hdfs", "exception"
Q2_WORDS = ("authentication", "failure")
MINUTE_NS = 60 * 1_000_000_000


def timed(runs, fn):
    """One warm-up call, then `runs` timed ones: (p50 ms, p99 ms, the last answer)."""
    answer = fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        answer = fn()
        times.append((time.perf_counter() - start) * 1000.0)
    times.sort()

    def rank(p):
        return times[min(len(times) - 1, max(0, round(p * (len(times) - 1))))]

    return {"p50_ms": rank(0.5), "p99_ms": rank(0.99), "answer": answer}


def peak_rss_kb():
    """This process's peak resident memory (VmHWM, KiB). Not getrusage's ru_maxrss: that
    one carries over from the parent across fork and exec, so it would report the
    bench's own peak when that is higher."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def disk_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def run_chdb(events, work, runs):
    from chdb import session

    db = session.Session(os.path.join(work, "chdb"))
    db.query("CREATE DATABASE IF NOT EXISTS bench")
    columns = """
        ts DateTime64(9), stream LowCardinality(String), level LowCardinality(String),
        message String, dataset LowCardinality(String), component LowCardinality(String),
        event_id LowCardinality(String), latency_ms UInt32, id UUID"""
    # A full-text index where this ClickHouse has one; a token bloom filter otherwise.
    made = None
    for index, settings in [
        ("INDEX words message TYPE text(tokenizer = 'splitByNonAlpha')", "SETTINGS allow_experimental_full_text_index = 1"),
        ("INDEX words lower(message) TYPE tokenbf_v1(32768, 3, 0) GRANULARITY 1", ""),
    ]:
        try:
            db.query(f"CREATE TABLE bench.logs ({columns}, {index}) ENGINE = MergeTree ORDER BY (stream, ts) {settings}")
            made = index.split(" TYPE ")[1].split("(")[0]
            break
        except Exception as e:  # noqa: BLE001 - the next kind of index is tried
            print(f"chdb: no {index!r}: {e}", file=sys.stderr)
    if made is None:
        raise SystemExit("chdb: could not create the table")
    source = (
        f"file('{events}', 'JSONEachRow', 'id String, ts Int64, stream String, level String, message String, "
        "labels Tuple(dataset String, component String), fields Tuple(event_id String, latency_ms UInt32)')"
    )
    start = time.perf_counter()
    db.query(
        "INSERT INTO bench.logs SELECT fromUnixTimestamp64Nano(ts), stream, level, message, labels.dataset, "
        f"labels.component, fields.event_id, fields.latency_ms, toUUID(id) FROM {source}"
    )
    db.query("OPTIMIZE TABLE bench.logs FINAL")
    load_s = time.perf_counter() - start

    def one(sql):
        return json.loads(db.query(sql, "JSON").bytes())["data"]

    word = f"hasToken(lower(message), '{Q1_WORD}')"
    q1 = f"stream = '{Q1_STREAM}' AND {word}"
    a, b = Q2_WORDS
    q2 = (
        f"hasToken(lower(message), '{a}') AND hasToken(lower(message), '{b}') "
        f"AND match(lower(message), '(^|[^a-z0-9]){a}[^a-z0-9]+{b}([^a-z0-9]|$)')"
    )
    queries = {
        "Q1 newest 100": lambda: len(one(f"SELECT * FROM bench.logs WHERE {q1} ORDER BY ts DESC LIMIT 100")),
        "Q1 count": lambda: int(one(f"SELECT count() AS n FROM bench.logs WHERE {q1}")[0]["n"]),
        "Q2 phrase count": lambda: int(one(f"SELECT count() AS n FROM bench.logs WHERE {q2}")[0]["n"]),
        "Q3 count by level": lambda: len(one("SELECT level, count() FROM bench.logs GROUP BY level")),
        "Q4 p95 by dataset x minute": lambda: len(
            one("SELECT dataset, toStartOfMinute(ts) AS m, quantile(0.95)(latency_ms) FROM bench.logs GROUP BY dataset, m")
        ),
    }
    figures = {name: timed(runs, fn) for name, fn in queries.items()}
    db.close()
    return {"engine": f"chdb {version('chdb')} ({made} index)", "load_s": load_s, "queries": figures}


def version(package):
    from importlib.metadata import version as installed

    return installed(package)


def run_tantivy(events, work, runs):
    import tantivy

    builder = tantivy.SchemaBuilder()
    builder.add_text_field("message", stored=True)
    for raw in ("stream", "level", "dataset", "component", "event_id", "id"):
        builder.add_text_field(raw, stored=True, tokenizer_name="raw", fast=raw in ("stream", "level", "dataset"))
    builder.add_integer_field("ts", stored=True, indexed=True, fast=True)
    builder.add_integer_field("latency_ms", stored=True, fast=True)
    schema = builder.build()
    path = os.path.join(work, "tantivy")
    os.makedirs(path, exist_ok=True)
    index = tantivy.Index(schema, path=path)
    start = time.perf_counter()
    writer = index.writer(heap_size=256 * 1024 * 1024, num_threads=2)
    with open(events, encoding="utf-8") as f:
        for line in f:
            e = json.loads(line)
            writer.add_document(
                tantivy.Document(
                    message=e["message"],
                    stream=e["stream"],
                    level=e["level"],
                    dataset=e["labels"]["dataset"],
                    component=e["labels"]["component"],
                    event_id=e["fields"]["event_id"],
                    id=e["id"],
                    ts=e["ts"],
                    latency_ms=e["fields"]["latency_ms"],
                )
            )
    writer.commit()
    writer.wait_merging_threads()
    load_s = time.perf_counter() - start
    index.reload()
    searcher = index.searcher()
    Q, Occur = tantivy.Query, tantivy.Occur
    q1 = Q.boolean_query(
        [(Occur.Must, Q.term_query(schema, "stream", Q1_STREAM)), (Occur.Must, Q.term_query(schema, "message", Q1_WORD))]
    )
    q2 = Q.phrase_query(schema, "message", list(Q2_WORDS))

    def newest():
        hits = searcher.search(q1, 100, order_by_field="ts", order=tantivy.Order.Desc).hits
        return len([searcher.doc(address).to_dict() for _, address in hits])

    def by_level():
        got = searcher.aggregate(Q.all_query(), {"g": {"terms": {"field": "level", "size": 1000}}})
        return len(got["g"]["buckets"])

    def p95():
        agg = {
            "d": {
                "terms": {"field": "dataset", "size": 1000},
                "aggs": {
                    "m": {
                        "histogram": {"field": "ts", "interval": MINUTE_NS},
                        "aggs": {"p": {"percentiles": {"field": "latency_ms", "percents": [95]}}},
                    }
                },
            }
        }
        got = searcher.aggregate(Q.all_query(), agg)
        return sum(len([m for m in d["m"]["buckets"] if m["doc_count"]]) for d in got["d"]["buckets"])

    queries = {
        "Q1 newest 100": newest,
        # A limit of 0 is refused: one hit is collected beside the count.
        "Q1 count": lambda: searcher.search(q1, 1).count,
        "Q2 phrase count": lambda: searcher.search(q2, 1).count,
        "Q3 count by level": by_level,
        "Q4 p95 by dataset x minute": p95,
    }
    figures = {name: timed(runs, fn) for name, fn in queries.items()}
    return {"engine": f"tantivy {version('tantivy')}", "load_s": load_s, "queries": figures}


def main():
    if len(sys.argv) != 5 or sys.argv[1] not in ("chdb", "tantivy"):
        raise SystemExit(__doc__)
    system, events, work, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    os.makedirs(work, exist_ok=True)
    out = (run_chdb if system == "chdb" else run_tantivy)(events, work, runs)
    out["system"] = system
    out["disk_bytes"] = disk_bytes(work)
    out["peak_rss_kb"] = peak_rss_kb()
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
