"""A task run in its own process for the cancel tests: ``python cancel_worker.py STORE NAME``.

It runs a ``@tracked`` generator that yields every 10 ms until it is asked to stop,
records its cleanup as a message from its ``finally`` block, and prints how it ended.
"""

from __future__ import annotations

import sys
import time

import tracked


def main() -> None:
    store, name = sys.argv[1], sys.argv[2]

    @tracked.tracked(name, total=None, store=store, min_interval=0.05)
    def job() -> object:
        try:
            while True:
                time.sleep(0.01)
                yield
        finally:
            tracked.current().add_message("cleanup ran")

    print("started", flush=True)
    try:
        for _ in job():
            pass
    except tracked.Cancelled:
        print("cancelled", flush=True)


if __name__ == "__main__":
    main()
