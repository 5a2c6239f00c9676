"""A webhook receiver for Tugboat's tests, independent of Tugboat's code.

Usage: receiver.py DIR [CERT KEY]. Listens on 127.0.0.1 (over TLS with
CERT and KEY when given) (a free port, written to
DIR/port) and appends one JSON line per request to DIR/received.jsonl:
the path, the webhook-id, whether the PyPI `standardwebhooks` library
verified the signature with the secret DIR/secrets.json maps the path's
first segment to, the status answered and the body.

The path says how to answer: /NAME/ok (200), /NAME/fail/N (500 to the
first N attempts of each webhook-id, then 200), /NAME/always500,
/NAME/slow (answers after 30 s), /NAME/redirect (302 to itself),
/NAME/huge (a 100 MB answer), /NAME/unsigned (200 without verifying).
"""

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook

DIR = sys.argv[1]
LOCK = threading.Lock()
ATTEMPTS = {}


def secret_for(name):
    try:
        with open(os.path.join(DIR, "secrets.json")) as f:
            return json.load(f).get(name)
    except FileNotFoundError:
        return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body=b""):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        parts = self.path.strip("/").split("/")
        name, how = parts[0], parts[1] if len(parts) > 1 else "ok"
        msg_id = self.headers.get("webhook-id")
        verified = False
        secret = secret_for(name)
        if secret is not None:
            try:
                Webhook(secret).verify(body, dict(self.headers.items()))
                verified = True
            except Exception:
                verified = False
        with LOCK:
            n = ATTEMPTS.get(msg_id, 0) + 1
            ATTEMPTS[msg_id] = n
        status = 200
        if how == "fail" and n <= int(parts[2]):
            status = 500
        elif how == "always500":
            status = 500
        elif how in ("ok", "fail") and not verified:
            status = 401
        record = {
            "path": self.path,
            "webhook_id": msg_id,
            "timestamp": self.headers.get("webhook-timestamp"),
            "verified": verified,
            "status": status,
            "received_at": time.time(),
            "body": json.loads(body) if body else None,
        }
        with LOCK:
            with open(os.path.join(DIR, "received.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
        if how == "slow":
            time.sleep(30)
            return self.answer(200)
        if how == "redirect":
            self.send_response(302)
            self.send_header("Location", self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if how == "huge":
            self.send_response(200)
            self.send_header("Content-Length", str(100 << 20))
            self.end_headers()
            chunk = b"x" * 65536
            try:
                for _ in range((100 << 20) // 65536):
                    self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        self.answer(status, b"{}")


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
if len(sys.argv) == 4:
    import ssl

    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(sys.argv[2], sys.argv[3])
    server.socket = tls.wrap_socket(server.socket, server_side=True)
with open(os.path.join(DIR, "port.tmp"), "w") as f:
    f.write(str(server.server_address[1]))
os.rename(os.path.join(DIR, "port.tmp"), os.path.join(DIR, "port"))
server.serve_forever()
