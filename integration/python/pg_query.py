"""Runs SQL queries against Gossamer's PostgreSQL door with psycopg (3), the PostgreSQL
driver most Python programs use, and prints what it got as JSON.

Usage: pg_query.py --dsn DSN QUERIES_JSON
QUERIES_JSON is a list of {"sql": ..., "params": [...] (optional), "binary": bool}.
Each answer is {"columns": [...], "types": [...], "rows": [[...]]} or {"error": ...};
timestamps are ISO 8601 strings with their offset.
"""

import argparse
import datetime
import json
import sys

import psycopg


def plain(value):
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    return value


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("queries")
    args = parser.parse_args()
    answers = []
    with psycopg.connect(args.dsn, autocommit=False) as conn:
        for q in json.loads(args.queries):
            try:
                with conn.cursor(binary=q.get("binary", False)) as cur:
                    params = q.get("params")
                    cur.execute(q["sql"], params if params is not None else None)
                    names = [d.name for d in cur.description]
                    types = [d.type_display for d in cur.description]
                    rows = [[plain(v) for v in row] for row in cur.fetchall()]
                    answers.append({"columns": names, "types": types, "rows": rows})
            except psycopg.Error as e:
                answers.append({"error": str(e), "sqlstate": e.sqlstate})
                conn.rollback()
        conn.commit()
    json.dump(answers, sys.stdout)


if __name__ == "__main__":
    main()
