#!/usr/bin/env python3
"""What room history (SPEC §11) costs in memory: bytes per room and per kept message.

Starts wshub twice on a free loopback port, with `--history-size N` (default 100) and with
`--history-size 0`, and in each fills ROOMS rooms (default 1 000) with MESSAGES messages each
(default 100) of SIZE bytes of ASCII data (default 64) through `POST /api/publish` on one
keep-alive connection. Before and after, it reads the server's VmRSS (/proc/PID/status) and,
after, `wshub_history_bytes` from /metrics. It prints, per room and per message:

- the metric (what history itself counts: each kept event's JSON, its slot, the room record);
- the RSS growth with history on, minus the RSS growth of the same publishing with history
  off (what publishing costs without history: allocator caches, buffers), i.e. what the
  process really holds for history, malloc overhead included.

The events published through the API carry no `from`, so each kept event is
`{"event":"message","room":"rI","data":"<SIZE bytes>","ts":T,"offset":N}`, about SIZE + 70
bytes; a WebSocket client's message also has `"from":USER` (about 25 bytes more).

Usage (standard library only; the binary is built with `cargo build --release`):

    python3 benches/history_memory.py [--server-bin target/release/wshub] [--rooms 1000]
        [--messages 100] [--size 64] [--history-size 100] [--json]
"""

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import time

API_KEY = "history-memory-bench"
# Time for the server to answer /healthz after it starts.
STARTUP_TIMEOUT_S = 10.0
# Pause before reading RSS, so that nothing still in flight is counted.
SETTLE_S = 0.5


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Server:
    """A wshub process on a free port, stopped on exit."""

    def __init__(self, binary, history_size):
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                binary,
                "--listen", f"127.0.0.1:{self.port}",
                "--protocol", "events",
                "--api-key", API_KEY,
                "--history-size", str(history_size),
                "--log-level", "warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        self.connection = None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                if self.get("/healthz").strip() == "ok":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"{binary} did not answer /healthz")
            time.sleep(0.05)

    def request(self, method, path, body=None, headers=None):
        """One request on the keep-alive connection, reopened if the server closed it."""
        for attempt in range(2):
            if self.connection is None:
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                self.connection.request(method, path, body=body, headers=headers or {})
                response = self.connection.getresponse()
                text = response.read().decode()
                if response.getheader("Connection", "").lower() == "close":
                    self.connection.close()
                    self.connection = None
                return response.status, text
            except (http.client.HTTPException, OSError):
                self.connection.close()
                self.connection = None
                if attempt == 1:
                    raise

    def get(self, path):
        status, text = self.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {text}")
        return text

    def metric(self, name):
        for line in self.get("/metrics").splitlines():
            if line.startswith(name + " "):
                return int(float(line.split()[1]))
        raise RuntimeError(f"no {name} on /metrics")

    def publish(self, room, data):
        body = json.dumps({"room": room, "data": data})
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
        status, text = self.request("POST", "/api/publish", body, headers)
        if status != 200:
            raise RuntimeError(f"POST /api/publish: {status} {text}")

    def stop(self):
        if self.connection is not None:
            self.connection.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def fill(binary, history_size, rooms, messages, size):
    """RSS growth (bytes) and the history metric after filling the rooms on a fresh server."""
    server = Server(binary, history_size)
    try:
        time.sleep(SETTLE_S)
        before = rss_kib(server.process.pid)
        data = ("0123456789" * (size // 10 + 1))[:size]
        started = time.monotonic()
        for message in range(messages):
            for room in range(rooms):
                server.publish(f"r{room}", data)
        elapsed = time.monotonic() - started
        time.sleep(SETTLE_S)
        after = rss_kib(server.process.pid)
        return {
            "rss_growth_bytes": (after - before) * 1024,
            "history_bytes_metric": server.metric("wshub_history_bytes"),
            "publish_secs": elapsed,
        }
    finally:
        server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server-bin", default=os.environ.get("WSHUB_BIN", "target/release/wshub"))
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=100, help="messages published per room")
    parser.add_argument("--size", type=int, default=64, help="bytes of data per message")
    parser.add_argument("--history-size", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    on = fill(args.server_bin, args.history_size, args.rooms, args.messages, args.size)
    off = fill(args.server_bin, 0, args.rooms, args.messages, args.size)
    kept = min(args.messages, args.history_size)
    held = on["rss_growth_bytes"] - off["rss_growth_bytes"]
    result = {
        "rooms": args.rooms,
        "messages_per_room": args.messages,
        "kept_per_room": kept,
        "data_bytes": args.size,
        "history_on": on,
        "history_off": off,
        "metric_bytes_per_room": on["history_bytes_metric"] / args.rooms,
        "metric_bytes_per_message": on["history_bytes_metric"] / (args.rooms * kept),
        "rss_bytes_per_room": held / args.rooms,
        "rss_bytes_per_message": held / (args.rooms * kept),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.rooms} rooms x {args.messages} messages of {args.size} B data "
          f"(--history-size {args.history_size}: {kept} kept per room)")
    for label, run in (("history on ", on), ("history off", off)):
        print(f"  {label}  RSS +{run['rss_growth_bytes'] / 2**20:.1f} MiB, "
              f"wshub_history_bytes {run['history_bytes_metric']:,}, "
              f"{args.rooms * args.messages / run['publish_secs']:,.0f} publishes/s")
    print(f"  per room     metric {result['metric_bytes_per_room']:,.0f} B, "
          f"RSS (on - off) {result['rss_bytes_per_room']:,.0f} B")
    print(f"  per message  metric {result['metric_bytes_per_message']:,.0f} B, "
          f"RSS (on - off) {result['rss_bytes_per_message']:,.0f} B")


if __name__ == "__main__":
    sys.exit(main())
