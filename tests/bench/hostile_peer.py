#!/usr/bin/env python3
"""A hostile member of a restore wave (tests/bench/peers.sh): it joins the wave with a
real restore token, as a station would, then answers every chunk request with noise.
Its peers must detect every chunk it sends, drop it, and take those chunks elsewhere.

usage: hostile_peer.py SERVER_URL MAC TOKEN STAGED_IMAGE PORT
"""
import http.server
import json
import os
import struct
import sys
import urllib.request

server, mac, token, image, port = sys.argv[1:6]


def post(path, body):
    req = urllib.request.Request(
        f"{server}/api/v1/stations/{mac}/{path}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


post("restore-progress", {"state": "running", "image": image, "done_bytes": 0, "total_bytes": 1})
wave = post("peers", {"port": int(port)})
print(f"joined wave {wave['wave']} with {len(wave['peers'])} peers", flush=True)


class Liar(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if "?ids=" in self.path:
            n = len(self.path.split("=", 1)[1].split(","))
            body = b"".join(struct.pack("<I", 65536) + os.urandom(65536) for _ in range(n))
        else:
            body = os.urandom(65536)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("0.0.0.0", int(port)), Liar).serve_forever()
