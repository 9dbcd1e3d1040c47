#!/usr/bin/env python3
"""A webhook receiver for measurements: answers 200 to every post and, on exit
(SIGTERM/SIGINT), prints how many posts and msg.notify messages it took per event.

Usage: webhook-sink.py [port]   (listens on 127.0.0.1, default port 9000)
"""
import collections
import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

posts = collections.Counter()
messages = collections.Counter()


class Sink(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        event = parse_qs(urlparse(self.path).query).get("event", ["?"])[0]
        posts[event] += 1
        parsed = json.loads(body or b"null")
        messages[event] += len(parsed) if isinstance(parsed, list) else 1
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def stop(*_):
    for event in sorted(posts):
        print(f"{event}: {posts[event]} posts, {messages[event]} entries", flush=True)
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
ThreadingHTTPServer(("127.0.0.1", port), Sink).serve_forever()
