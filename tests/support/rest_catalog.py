"""An Iceberg REST catalog for the tests: the specification's HTTP routes over
pyiceberg's SqlCatalog (SQLite), as the Iceberg project's own REST test fixture is its
routes over the JDBC catalog. Requirements, updates and conflicts are pyiceberg's code;
this file only maps HTTP to it.

    python3 rest_catalog.py --db DIR/catalog.db [--token T] [--client ID:SECRET] [--prop k=v]...

Prints the port it listens on (127.0.0.1), then serves one request at a time (SQLite,
and HTTP/1.0: each connection carries one request) until killed. Every request is
appended to DIR/requests.log as "METHOD PATH STATUS" (the tests read which calls ran).
"""

import argparse
import json
import os
import re
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer

from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NoSuchNamespaceError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.io.pyarrow import PyArrowFileIO
from pyiceberg.table import CommitTableRequest

PREFIX = "wh"
ROUTES = [
    # Tests only: the next N table commits are answered 409, as when another writer
    # commits first each time.
    ("POST", r"/test/conflicts"),
    ("GET", r"/v1/config"),
    ("POST", r"/v1/oauth/tokens"),
    ("GET", rf"/v1/{PREFIX}/namespaces"),
    ("POST", rf"/v1/{PREFIX}/namespaces"),
    ("GET", rf"/v1/{PREFIX}/namespaces/(?P<ns>[^/]+)"),
    ("HEAD", rf"/v1/{PREFIX}/namespaces/(?P<ns>[^/]+)"),
    ("GET", rf"/v1/{PREFIX}/namespaces/(?P<ns>[^/]+)/tables"),
    ("POST", rf"/v1/{PREFIX}/namespaces/(?P<ns>[^/]+)/register"),
    ("GET", rf"/v1/{PREFIX}/namespaces/(?P<ns>[^/]+)/tables/(?P<table>[^/]+)"),
    ("HEAD", rf"/v1/{PREFIX}/namespaces/(?P<ns>[^/]+)/tables/(?P<table>[^/]+)"),
    ("POST", rf"/v1/{PREFIX}/namespaces/(?P<ns>[^/]+)/tables/(?P<table>[^/]+)"),
    ("DELETE", rf"/v1/{PREFIX}/namespaces/(?P<ns>[^/]+)/tables/(?P<table>[^/]+)"),
]
ERRORS = [
    (NoSuchTableError, 404),
    (NoSuchNamespaceError, 404),
    (TableAlreadyExistsError, 409),
    (NamespaceAlreadyExistsError, 409),
    (CommitFailedException, 409),
    (ValueError, 400),
]


class S3PutFileIO(PyArrowFileIO):
    """pyarrow's FileIO, except that S3 files are written with one boto3 PUT: pyarrow
    reads from moto, but its multipart uploads fail there (moto answers
    CompleteMultipartUpload with INTERNAL_FAILURE). Used when --prop s3.endpoint is set."""

    def new_output(self, location):
        if not location.startswith("s3://"):
            return super().new_output(location)
        return S3PutOutput(location, super().new_output(location), self.properties)


class S3PutOutput:
    def __init__(self, location, pyarrow_output, props):
        self.location, self.pyarrow_output, self.props = location, pyarrow_output, props

    def __len__(self):
        return len(self.pyarrow_output)

    def exists(self):
        return self.pyarrow_output.exists()

    def to_input_file(self):
        return self.pyarrow_output.to_input_file()

    def create(self, overwrite=False):
        import io

        import boto3

        if not overwrite and self.exists():
            raise FileExistsError(self.location)
        bucket, _, key = self.location.removeprefix("s3://").partition("/")
        s3 = boto3.client(
            "s3",
            endpoint_url=self.props["s3.endpoint"],
            aws_access_key_id=self.props["s3.access-key-id"],
            aws_secret_access_key=self.props["s3.secret-access-key"],
            region_name=self.props["s3.region"],
        )

        class Upload(io.BytesIO):
            def close(self):
                if not self.closed:
                    s3.put_object(Bucket=bucket, Key=key, Body=self.getvalue())
                super().close()

        return Upload()


class HttpError(Exception):
    def __init__(self, status, kind, message):
        super().__init__(message)
        self.status, self.kind = status, kind


def namespace(raw):
    return tuple(urllib.parse.unquote(raw).split("\x1f"))


def loaded(table):
    return {
        "metadata-location": table.metadata_location,
        "metadata": json.loads(table.metadata.model_dump_json()),
        "config": {},
    }


class Handler(BaseHTTPRequestHandler):
    catalog = None
    conflicts = 0
    token = None
    client = None
    log_path = None

    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        with open(self.log_path, "a") as f:
            f.write(f"{self.command} {self.path} {status}\n")

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def route(self):
        path = urllib.parse.urlsplit(self.path).path
        for method, pattern in ROUTES:
            m = re.fullmatch(pattern, path)
            if m and method == self.command:
                return pattern, m.groupdict()
        raise HttpError(404, "NotFound", f"no route {self.command} {path}")

    def handle_any(self):
        try:
            pattern, args = self.route()
            if pattern.endswith("oauth/tokens"):
                return self.answer(200, self.oauth())
            if pattern == "/test/conflicts":
                Handler.conflicts = json.loads(self.body())["n"]
                return self.answer(200, {"conflicts": Handler.conflicts})
            if self.token and self.headers.get("Authorization") != f"Bearer {self.token}":
                raise HttpError(401, "NotAuthorizedException", "no or wrong bearer token")
            return self.answer(*self.dispatch(pattern, args))
        except HttpError as e:
            body = {"error": {"message": str(e), "type": e.kind, "code": e.status}}
            return self.answer(e.status, body)
        except Exception as e:  # noqa: BLE001 - the client gets it as the spec's error
            for kind, status in ERRORS:
                if isinstance(e, kind):
                    body = {"error": {"message": str(e), "type": type(e).__name__, "code": status}}
                    return self.answer(status, body)
            body = {"error": {"message": repr(e), "type": type(e).__name__, "code": 500}}
            return self.answer(500, body)

    def oauth(self):
        form = urllib.parse.parse_qs(self.body().decode())
        given = f"{form.get('client_id', [''])[0]}:{form.get('client_secret', [''])[0]}"
        if form.get("grant_type") != ["client_credentials"] or given != self.client:
            raise HttpError(401, "NotAuthorizedException", "bad client credentials")
        return {"access_token": self.token, "token_type": "bearer", "expires_in": 3600}

    def dispatch(self, pattern, args):
        cat = self.catalog
        if pattern == "/v1/config":
            return 200, {"defaults": {}, "overrides": {"prefix": PREFIX}}
        ns = namespace(args["ns"]) if "ns" in args else None
        table = args.get("table")
        if pattern.endswith("/namespaces") and self.command == "GET":
            return 200, {"namespaces": [list(n) for n in cat.list_namespaces()]}
        if pattern.endswith("/namespaces") and self.command == "POST":
            req = json.loads(self.body())
            cat.create_namespace(tuple(req["namespace"]), req.get("properties") or {})
            return 200, {"namespace": req["namespace"], "properties": req.get("properties") or {}}
        if pattern.endswith("/tables") and self.command == "GET":
            ids = [{"namespace": list(i[:-1]), "name": i[-1]} for i in cat.list_tables(ns)]
            return 200, {"identifiers": ids}
        if pattern.endswith("/register"):
            req = json.loads(self.body())
            return 200, loaded(cat.register_table(ns + (req["name"],), req["metadata-location"]))
        if table is None:
            props = cat.load_namespace_properties(ns)
            return (204, None) if self.command == "HEAD" else (200, {"namespace": list(ns), "properties": props})
        if self.command == "DELETE":
            cat.drop_table(ns + (table,))
            return 204, None
        if self.command == "POST":
            req = CommitTableRequest.model_validate_json(self.body())
            if Handler.conflicts > 0:
                Handler.conflicts -= 1
                raise CommitFailedException("another writer committed first (test)")
            current = cat.load_table(ns + (table,))
            done = cat.commit_table(current, req.requirements, req.updates)
            return 200, {
                "metadata-location": done.metadata_location,
                "metadata": json.loads(done.metadata.model_dump_json()),
            }
        found = cat.load_table(ns + (table,))
        return (204, None) if self.command == "HEAD" else (200, loaded(found))

    do_GET = do_POST = do_HEAD = do_DELETE = handle_any


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--db", required=True)
    p.add_argument("--token")
    p.add_argument("--client")
    p.add_argument("--prop", action="append", default=[])
    a = p.parse_args()
    props = dict(kv.split("=", 1) for kv in a.prop)
    if "s3.endpoint" in props:
        props["py-io-impl"] = "__main__.S3PutFileIO"
    Handler.catalog = SqlCatalog("rest", uri=f"sqlite:///{a.db}", **props)
    Handler.token, Handler.client = a.token, a.client
    Handler.log_path = os.path.join(os.path.dirname(a.db), "requests.log")
    server = HTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
