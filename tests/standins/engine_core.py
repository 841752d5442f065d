"""Stand-in for vLLM's EngineCore process: the grandchild that really holds the GPU memory.

Run by vllm_standin.py (never directly) as ``python engine_core.py NAME LINGER_S`` with a pipe on
stdin. Each line on the pipe is the number of bytes the engine holds now; this process mirrors it
into its own fake-GPU file (``$APPLIANCE_FAKE_GPU_DIR/<own pid>.json``).

Owns: its fake-GPU file and its own exit. Must not: exit because of SIGTERM/SIGINT (both are
ignored, so a SIGTERM sent to the whole process group leaves it running), nor exit the moment its
parent dies. Parent-death handling: end of file on the pipe means the API server is gone (exited,
crashed or was killed); the process then keeps its memory for LINGER_S seconds (negative: forever)
before removing its file and exiting. Only SIGKILL to the process group frees the memory at once.
"""

from __future__ import annotations

import signal
import sys
import time

from standin_common import FakeGpuReport


def main(argv: list[str]) -> int:
    name, linger_s = argv[1], float(argv[2])
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    report = FakeGpuReport(name)
    for line in sys.stdin:
        line = line.strip()
        if line:
            report.set(int(line))
    # The parent is gone: an orphaned EngineCore keeps its memory until it notices.
    if linger_s < 0:
        while True:
            signal.pause()
    time.sleep(linger_s)
    report.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
