"""What one model call costs in process right after the core had nothing to do, against
the same call back-to-back.

    python bench/idle.py [--repository model_repository] [--models bn_mlp,bn_cnn]
                         [--calls 600] [--rounds 5]

At one request in flight a server's core waits between calls for the round trip (the
no-op gRPC server's is ~0.4 ms on this machine), while bench/serve.py's roofline counts
the model's own cost as in-process calls made back-to-back. Here each call follows a gap:
a sleep (the core may idle, and the next call starts cold), or a spin of the same length
(the core stays busy), or none. The session is made as our server makes it (half the CPUs
for intra-op threads, no spin-waiting), batch 1 of zeros. Modes are interleaved within
each round; the table gives the median over rounds of each mode's median call, and of its
ratio to back-to-back in the same round. Writes bench/results/idle.json and .md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from bench.serve import RESULTS, accounted, served_file, write_results  # noqa: E402

# (how the gap is spent, its length in seconds)
GAPS = (("back-to-back", 0.0), ("sleep", 1e-4), ("sleep", 4e-4), ("sleep", 1e-3), ("spin", 4e-4))


def gap_name(how: str, seconds: float) -> str:
    return how if not seconds else f"{how} {seconds * 1e3:g} ms"


def wait(how: str, seconds: float) -> None:
    if how == "sleep":
        time.sleep(seconds)
    elif how == "spin":
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass


def calls_after_gaps(session: Any, how: str, seconds: float, calls: int) -> list[float]:
    """Seconds of each of `calls` batch-1 calls, each after a gap spent `how`."""
    feed = {session.get_inputs()[0].name: np.zeros((1, 1, 28, 28), np.float32)}
    took = []
    for _ in range(calls):
        wait(how, seconds)
        start = time.perf_counter()
        session.run(None, feed)
        took.append(time.perf_counter() - start)
    return took


def median_call_us(session: Any, how: str, seconds: float, calls: int) -> dict[str, float]:
    return {"median_us": statistics.median(calls_after_gaps(session, how, seconds, calls)) * 1e6}


def measure(repository: Path, models: list[str], calls: int, rounds: int) -> dict[str, Any]:
    import onnxruntime as ort

    from server.runtime import session_options

    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": platform.platform(),
        "calls": calls,
        "rounds": rounds,
        "models": {},
    }
    for model in models:
        session = ort.InferenceSession(
            str(served_file(repository, model)),
            sess_options=session_options(0, 1, False),
            providers=["CPUExecutionProvider"],
        )
        calls_after_gaps(session, "back-to-back", 0.0, calls)  # warm-up
        runs: dict[str, list[dict]] = {gap_name(*gap): [] for gap in GAPS}
        for _ in range(rounds):
            for how, seconds in GAPS:
                run = partial(median_call_us, session, how, seconds, calls)
                runs[gap_name(how, seconds)].append(accounted(run, None))
        results["models"][model] = summarise(runs)
    return results


def summarise(runs: dict[str, list[dict]]) -> dict[str, Any]:
    """Per gap: the median over rounds of its median call, its ratio to back-to-back in the
    same round, and the other work on the machine meanwhile."""
    base = [run["median_us"] for run in runs["back-to-back"]]
    return {
        name: {
            "median_us": statistics.median(run["median_us"] for run in rounds),
            "ratio": statistics.median(
                run["median_us"] / b for run, b in zip(rounds, base, strict=True)
            ),
            "foreign_cpus_max": max(run["foreign_cpus"] for run in rounds),
            "load_after_max": max(run["load_after"] for run in rounds),
        }
        for name, rounds in runs.items()
    }


def table(results: dict[str, Any]) -> str:
    names = [gap_name(*gap) for gap in GAPS]
    lines = [
        "| model | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for model, gaps in results["models"].items():
        cells = [f"{gaps[n]['median_us']:,.0f} us ({gaps[n]['ratio']:.2f}x)" for n in names]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    foreign = max(g["foreign_cpus_max"] for m in results["models"].values() for g in m.values())
    lines += [
        "",
        f"In-process batch-1 call, median over {results['rounds']} rounds of each mode's "
        f"median of {results['calls']} calls (ratio to back-to-back in the same round); "
        f"{results['date']}, {results['machine']}; other work on the machine at most "
        f"{foreign:.2f} CPUs.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--models", default="bn_mlp,bn_cnn")
    parser.add_argument("--calls", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS / "idle.json")
    args = parser.parse_args(argv)
    results = measure(args.repository, args.models.split(","), args.calls, args.rounds)
    return write_results(results, table, args.output)


if __name__ == "__main__":
    sys.exit(main())
