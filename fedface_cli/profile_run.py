"""Run the `fedface` command under cProfile timed by the event-loop thread's
own CPU clock: `python -m fedface_cli.profile_run OUT.prof serve ...`.

`python -m cProfile` uses wall-clock time, which in an asyncio server charges
every await (database round trips, socket waits) to whatever frame was last
on the stack; thread CPU time charges only work done. Work in worker threads
(asyncio.to_thread) is not seen: the process's CPU minus this profile's total
is what those threads used."""

from __future__ import annotations

import cProfile
import sys
import time


def main() -> None:
    out, args = sys.argv[1], sys.argv[2:]
    from fedface_cli.main import app

    profiler = cProfile.Profile(time.thread_time)
    profiler.enable()
    try:
        app(args, prog_name="fedface")
    except (SystemExit, KeyboardInterrupt):
        pass
    finally:
        profiler.disable()
        profiler.dump_stats(out)


if __name__ == "__main__":
    main()
