"""Redis's own time per PUBLISH with N subscriber connections on the channel.

    .venv/bin/python bench/bench_pubsub.py [--subscribers 0,1,10,100] [--messages 5000]

Starts its own redis-server; for each N, N raw connections subscribe to one channel
(drained by threads), then a pipeline publishes ``--messages`` small events and
``INFO commandstats`` gives the server's microseconds per ``PUBLISH`` (the socket
writes to the subscribers that follow the call are not counted in it). Sizes what
a write costs the master per watching process (bench/README.md, scale).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import redis
from bench_redis import start_redis


def drain(sock: socket.socket, stop: threading.Event) -> None:
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            if not sock.recv(1 << 16):
                return
        except TimeoutError:
            continue
        except OSError:
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", default="0,1,10,100")
    parser.add_argument("--messages", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        server, url = start_redis(shutil.which("redis-server") or "redis-server", Path(directory))
        stop = threading.Event()
        subscribers: list[socket.socket] = []
        try:
            client = redis.Redis.from_url(url)
            port = client.connection_pool.connection_kwargs["port"]
            for count in (int(n) for n in args.subscribers.split(",")):
                while len(subscribers) < count:
                    sock = socket.create_connection(("127.0.0.1", port))
                    sock.sendall(b"SUBSCRIBE ch\r\n")
                    subscribers.append(sock)
                    threading.Thread(target=drain, args=(sock, stop), daemon=True).start()
                time.sleep(0.3)
                client.config_resetstat()
                pipe = client.pipeline(transaction=False)
                for i in range(args.messages):
                    pipe.publish("ch", b'{"name":"job","count":%d,"messages":["x"]}' % i)
                pipe.execute()
                row = client.info("commandstats")["cmdstat_publish"]
                print(f"subscribers {count:4}: {row['usec_per_call']:7.2f} us per PUBLISH "
                      f"on the server", flush=True)
            client.close()
        finally:
            stop.set()
            for sock in subscribers:
                sock.close()
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    main()
