"""presignd from Python (grpcio): issue a PUT link and upload through it, issue
a GET link and download the bytes back, then list my links.

    examples/python/setup.sh        # once: grpcio, grpcio-tools into .venv
    PRESIGND_TOKEN=... examples/python/.venv/bin/python examples/python/client.py

Environment: PRESIGND_TOKEN (required: the caller's bearer token),
PRESIGND_ENDPOINT (default http://127.0.0.1:50051; plaintext, as
presignctl's),
PRESIGND_BUCKET (default presignd-dev), PRESIGND_OBJECT_KEY (default
examples/python-<random>.txt).

The stubs are generated from proto/ at start (grpc_tools.protoc into a
temporary directory), so they always match the server's API; nothing
generated is committed. Like presignd itself, the example never prints a URL:
a presigned URL is a bearer credential.
"""

import atexit
import importlib
import os
import pathlib
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import uuid

import grpc
from grpc_tools import protoc

PROTO_ROOT = pathlib.Path(__file__).resolve().parents[2] / "proto"
PROTO_FILE = "presignd/v1/presignd.proto"


def load_stubs():
    """Compiles presignd.proto into a temporary package and imports it."""
    out = tempfile.mkdtemp(prefix="presignd-stubs-")
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    # The well-known types (duration, timestamp) ship with grpcio-tools.
    wkt = pathlib.Path(protoc.__file__).parent / "_proto"
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{wkt}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(PROTO_ROOT / PROTO_FILE),
        ]
    )
    if rc != 0:
        sys.exit(f"protoc failed on {PROTO_ROOT / PROTO_FILE}")
    sys.path.insert(0, out)
    pb = importlib.import_module("presignd.v1.presignd_pb2")
    rpc = importlib.import_module("presignd.v1.presignd_pb2_grpc")
    return pb, rpc


def send(method, url, headers, body=None):
    """Sends the request the link was signed for: its method, the headers the
    reply listed (exactly as given), the body. Returns the HTTP status and body."""
    request = urllib.request.Request(url, data=body, method=method)
    for h in headers:
        request.add_header(h.name, h.value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def main():
    token = os.environ.get("PRESIGND_TOKEN") or sys.exit(
        "PRESIGND_TOKEN is not set: the caller's bearer token"
    )
    endpoint = os.environ.get("PRESIGND_ENDPOINT", "http://127.0.0.1:50051")
    address = endpoint.removeprefix("http://")
    bucket = os.environ.get("PRESIGND_BUCKET", "presignd-dev")
    key = os.environ.get("PRESIGND_OBJECT_KEY") or f"examples/python-{uuid.uuid4()}.txt"
    body = b"hello from the presignd Python example\n"

    pb, rpc = load_stubs()
    channel = grpc.insecure_channel(address)
    links = rpc.LinkServiceStub(channel)
    auth = [("authorization", f"Bearer {token}")]

    try:
        # 1. A PUT link, bound to a content type: the upload must send it.
        put = links.IssueLink(
            pb.IssueLinkRequest(
                bucket=bucket,
                object_key=key,
                method=pb.METHOD_PUT,
                ttl={"seconds": 300},
                content_type="text/plain",
                labels={"example": "python"},
            ),
            metadata=auth,
            timeout=10,
        )
        print(f"issued PUT link {put.link.id} key_id={put.link.key_id} "
              f"expires_at={put.link.expires_at.ToJsonString()}")
        status, _ = send("PUT", put.url, put.headers, body)
        print(f"uploaded {len(body)} bytes to {bucket}/{key}: HTTP {status}")
        if status != 200:
            sys.exit(f"the upload failed: HTTP {status}")

        # 2. A GET link for the same object: the store serves the bytes back.
        get = links.IssueLink(
            pb.IssueLinkRequest(
                bucket=bucket, object_key=key, method=pb.METHOD_GET, ttl={"seconds": 60}
            ),
            metadata=auth,
            timeout=10,
        )
        print(f"issued GET link {get.link.id}")
        status, got = send("GET", get.url, get.headers)
        print(f"downloaded {len(got)} bytes: HTTP {status}, same bytes: {got == body}")
        if status != 200 or got != body:
            sys.exit("the download did not return the uploaded bytes")

        # 3. My links in this bucket, newest first, page by page.
        request = pb.ListLinksRequest(
            filter=pb.LinkFilter(bucket=bucket), page_size=100
        )
        mine = []
        while True:
            page = links.ListLinks(request, metadata=auth, timeout=10)
            mine.extend(page.links)
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
        print(f"my links in {bucket}: {len(mine)}")
        for link in mine:
            print(f"  {link.id} {pb.Method.Name(link.method)} {link.object_key} "
                  f"{pb.LinkState.Name(link.state)} caller={link.caller}")
    except grpc.RpcError as e:
        # The status code and message say what was wrong (a bad field is
        # INVALID_ARGUMENT naming it); details carry the same, structured.
        sys.exit(f"presignd answered {e.code().name}: {e.details()}")


if __name__ == "__main__":
    main()
