"""wshub seen from the Python `websockets` library (driven by tests/clients.rs).

    python python_client.py SCENARIO URL [LIMIT]

URL is the server's WebSocket URL without query (ws://127.0.0.1:PORT/ws). Scenarios:

- events: join/message/presence/online/direct round trips with `id` echo (server: --protocol events)
- fragmented: a text message sent as fragments arrives whole (server: --protocol events)
- limits: a message of exactly LIMIT bytes is echoed, LIMIT + 1 closes with 1009 (--protocol echo)
- ping_close: ping/pong, then a normal close echoed with 1000 (server: --protocol echo)

Prints one `ok: CHECK` line per passed check and `done` at the end; any failure raises, so the
exit code is non-zero and the traceback says what differed.
"""

import asyncio
import json
import sys

import websockets
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

TIMEOUT = 10


def ok(check):
    print(f"ok: {check}", flush=True)


def expect_equal(what, got, want):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


async def recv_json(ws):
    async with asyncio.timeout(TIMEOUT):
        text = await ws.recv()
    if not isinstance(text, str):
        raise AssertionError(f"expected a text frame, got {text!r}")
    return json.loads(text)


async def send_json(ws, event):
    await ws.send(json.dumps(event))


async def events(url):
    async with connect(f"{url}?user=alice") as alice, connect(f"{url}?user=bob") as bob:
        await send_json(alice, {"event": "ping", "id": "p1"})
        reply = await recv_json(alice)
        expect_equal("ping reply", {k: reply[k] for k in ("event", "id", "code")}, {"event": "ping", "id": "p1", "code": 0})
        if not isinstance(reply.get("ts"), int):
            raise AssertionError(f"ping reply without a numeric ts: {reply!r}")
        ok("ping echoes id")

        await send_json(alice, {"event": "join", "room": "lobby", "id": 1})
        joined = await recv_json(alice)
        # With history on (the default), the room's position (SPEC §11).
        epoch = joined.get("data", {}).get("epoch")
        if not isinstance(epoch, str):
            raise AssertionError(f"join reply without an epoch: {joined!r}")
        expect_equal("alice join", joined,
                     {"event": "join", "id": 1, "code": 0, "room": "lobby",
                      "data": {"count": 1, "epoch": epoch, "offset": 0}})
        await send_json(bob, {"event": "join", "room": "lobby", "id": "b1"})
        expect_equal("bob join", await recv_json(bob),
                     {"event": "join", "id": "b1", "code": 0, "room": "lobby",
                      "data": {"count": 2, "epoch": epoch, "offset": 0}})
        expect_equal("presence join", await recv_json(alice),
                     {"event": "presence", "room": "lobby", "data": {"user": "bob", "state": "join"}})
        ok("join and presence")

        await send_json(bob, {"event": "online", "room": "lobby", "id": [7]})
        expect_equal("online", await recv_json(bob),
                     {"event": "online", "id": [7], "code": 0, "room": "lobby",
                      "data": {"count": 2, "users": ["alice", "bob"]}})
        ok("online lists the room")

        data = {"text": "hé ✓ 🦀", "n": [1, 2.5, None, True]}
        await send_json(alice, {"event": "message", "room": "lobby", "data": data, "id": 2})
        for name, ws in (("alice", alice), ("bob", bob)):
            got = await recv_json(ws)
            expect_equal(f"message to {name}", {k: v for k, v in got.items() if k != "ts"},
                         {"event": "message", "room": "lobby", "from": "alice", "data": data, "offset": 1})
            if not isinstance(got.get("ts"), int):
                raise AssertionError(f"message without ts: {got!r}")
        ok("room message reaches every member, sender included")

        await send_json(bob, {"event": "direct", "to": "alice", "data": "psst", "id": 9})
        got = await recv_json(alice)
        expect_equal("direct", {k: v for k, v in got.items() if k != "ts"},
                     {"event": "direct", "from": "bob", "data": "psst"})
        expect_equal("direct reply", await recv_json(bob), {"event": "direct", "id": 9, "code": 0})
        await send_json(bob, {"event": "direct", "to": "nobody", "data": 1, "id": 10})
        reply = await recv_json(bob)
        expect_equal("direct to offline", (reply["event"], reply["id"], reply["code"]), ("direct", 10, 404))
        ok("direct with id echo and 404 for an offline user")

        await bob.send("{not json")
        reply = await recv_json(bob)
        expect_equal("malformed", (reply["event"], reply["code"]), ("error", 400))
        await send_json(bob, {"event": "ping", "id": "still-open"})
        expect_equal("still open", (await recv_json(bob))["id"], "still-open")
        ok("malformed JSON gets 400 and the connection stays open")

        await bob.close(1000, "bye")
        expect_equal("bob close code", bob.protocol.close_rcvd.code, 1000)
        expect_equal("presence leave", await recv_json(alice),
                     {"event": "presence", "room": "lobby", "data": {"user": "bob", "state": "leave"}})
        ok("close 1000 and presence leave")


async def fragmented(url):
    async with connect(f"{url}?user=frag") as ws:
        await send_json(ws, {"event": "join", "room": "r"})
        await recv_json(ws)
        body = json.dumps({"event": "message", "room": "r", "id": "f", "data": {"text": "ünïcødé " * 200}},
                          ensure_ascii=False)
        cuts = [0, 1, 17, len(body) // 2, len(body) - 1, len(body)]
        pieces = [body[a:b] for a, b in zip(cuts, cuts[1:])]

        async def fragments():
            for piece in pieces:
                yield piece

        # websockets sends an async iterator as one fragmented message: one frame per piece.
        await ws.send(fragments())
        got = await recv_json(ws)
        expect_equal("fragmented message data", got["data"], {"text": "ünïcødé " * 200})
        ok(f"text message in {len(pieces)} fragments arrives whole")

        async def binary_fragments():
            for piece in (b"\x00\x01", b"", b"\xff" * 300):
                yield piece

        await ws.send(binary_fragments())
        reply = await recv_json(ws)
        expect_equal("binary refused", (reply["event"], reply["code"]), ("error", 400))
        ok("fragmented binary message is refused whole with one error")


async def limits(url, limit):
    async with connect(url, max_size=None) as ws:
        at_limit = "x" * limit
        await ws.send(at_limit)
        async with asyncio.timeout(TIMEOUT):
            echoed = await ws.recv()
        expect_equal("echo of a message at the limit", len(echoed), limit)
        if echoed != at_limit:
            raise AssertionError("echo differs")
        ok(f"{limit}-byte message is echoed")
        await ws.send(b"\x01" * (limit - 1))
        async with asyncio.timeout(TIMEOUT):
            echoed = await ws.recv()
        expect_equal("binary echo", echoed, b"\x01" * (limit - 1))
        ok(f"{limit - 1}-byte binary message is echoed")

        await ws.send("y" * (limit + 1))
        try:
            async with asyncio.timeout(TIMEOUT):
                extra = await ws.recv()
            raise AssertionError(f"over-limit message was answered: {len(extra)} bytes")
        except ConnectionClosed as closed:
            expect_equal("close code", closed.rcvd.code if closed.rcvd else None, 1009)
        ok(f"{limit + 1}-byte message closes with 1009")


async def ping_close(url):
    async with connect(url) as ws:
        waiter = await ws.ping(b"are you there")
        async with asyncio.timeout(TIMEOUT):
            latency = await waiter
        ok(f"ping answered by a matching pong ({latency * 1000:.1f} ms)")
        await ws.send("after ping")
        async with asyncio.timeout(TIMEOUT):
            expect_equal("echo", await ws.recv(), "after ping")
        await ws.close(1000, "bye")
        rcvd = ws.protocol.close_rcvd
        expect_equal("server close code", rcvd.code if rcvd else None, 1000)
        ok("close 1000 is echoed")
    async with connect(url) as ws:
        await ws.close(4001, "app code")
        rcvd = ws.protocol.close_rcvd
        expect_equal("server close code", rcvd.code if rcvd else None, 4001)
        ok("application close code 4001 is echoed")


def main():
    scenario, url = sys.argv[1], sys.argv[2]
    print(f"websockets {websockets.__version__}: {scenario}", flush=True)
    if scenario == "events":
        asyncio.run(events(url))
    elif scenario == "fragmented":
        asyncio.run(fragmented(url))
    elif scenario == "limits":
        asyncio.run(limits(url, int(sys.argv[3])))
    elif scenario == "ping_close":
        asyncio.run(ping_close(url))
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    print("done", flush=True)


if __name__ == "__main__":
    main()
