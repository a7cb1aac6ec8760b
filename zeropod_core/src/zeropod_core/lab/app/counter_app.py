"""Demo app for zeropod: an HTTP server that keeps a request counter in memory.

A restore that lost the process's memory shows up as a counter that starts again at 1.
Environment:
  APP_PORT          port to listen on (default 8080), on all IPv4 and IPv6 addresses
  APP_ALLOC_MIB     MiB of dirty memory to hold (default 0); GET /crc checks it survived
  APP_START_DELAY   seconds to sleep before listening, to model a slow start (default 0)
"""

import http.server
import json
import os
import socket
import sys
import time
import zlib

PORT = int(os.environ.get("APP_PORT", "8080"))
ALLOC_MIB = int(os.environ.get("APP_ALLOC_MIB", "0"))
START_DELAY = float(os.environ.get("APP_START_DELAY", "0"))

time.sleep(START_DELAY)
# Random bytes repeated: every page is written, so CRIU has to dump all of it.
BALLAST = bytearray(os.urandom(1 << 20)) * ALLOC_MIB
BALLAST_CRC = zlib.crc32(BALLAST)
STARTED = time.time()
count = 0


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        global count
        body: dict[str, object]
        if self.path == "/crc":
            body = {"crc_ok": zlib.crc32(BALLAST) == BALLAST_CRC, "mib": ALLOC_MIB}
        else:
            count += 1
            body = {"count": count, "pid": os.getpid(), "started": STARTED}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server(http.server.HTTPServer):
    address_family = socket.AF_INET6
    allow_reuse_address = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


server = Server(("::", PORT), Handler)
print(f"counter app listening on :{PORT} (alloc {ALLOC_MIB} MiB)", flush=True)
sys.stderr.write("counter app ready\n")
sys.stderr.flush()
server.serve_forever()
