"""Python's cyclic garbage collector paused while a process imports its libraries, which it then leaves be.

Importing torch and torch._dynamo makes about 400,000 objects that live as long as the process. With the
collector running, the import itself triggers collections that walk them again and again, and each later
full collection walks them all (0.19 s here). Paused during the import and frozen after it (`gc.freeze()`:
moved where collections never look), they cost neither: torch, torch._dynamo and this app's batched training
import in 2.4 to 3.5 s instead of 3.6 to 4.1 s here. What the process makes afterwards is collected as before.
The price: the cycles the imports leave as garbage are frozen with the rest (a run's peak RSS: about 10 MiB of
800 more); collecting them first would cost the full collection this saves.

Used by the batched launcher's launch process for what it preloads (launch_process.py) and by this app's
entrypoint for its own imports (src/train.py).
"""

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def imports_without_collector() -> Iterator[None]:
    """Run the body with the collector paused. If it imported modules, freeze every object there is then
    (the imports' objects, and the few the caller holds: they are never collected, even once garbage), and
    resume the collector if it ran before."""
    was_running = gc.isenabled()
    modules_before = len(sys.modules)
    gc.disable()
    try:
        yield
    finally:
        if len(sys.modules) > modules_before:
            gc.freeze()
        if was_running:
            gc.enable()
