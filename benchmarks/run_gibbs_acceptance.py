"""Issue 13's acceptance test (``tests/test_gibbs.py::test_gibbs_reproduces_long_nuts_runs_on_twenty_tiles``)
with its 20 tiles spread over processes, each tile's result appended to a JSON-lines file as it
finishes, so a long run (~3 h of CPU, mostly NUTS) can use every core and be resumed.

Run by hand: ``python benchmarks/run_gibbs_acceptance.py --processes 2 --out acceptance.jsonl``; tiles
already in ``--out`` are skipped. At the end the test's rule (``acceptance_verdict``) is applied to the rows in the
file and printed (exit status 1 if it fails, 2 if tiles are missing).
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
N_TILES = 20


def _one(t: int) -> dict:
    sys.path.insert(0, str(TESTS))
    from test_gibbs import compare_tile_with_long_nuts

    row = compare_tile_with_long_nuts(t)
    row["index"] = t
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("gibbs_acceptance.jsonl"))
    ap.add_argument("--tiles", type=int, nargs="*", default=None, help="tile indices (default: all 20)")
    args = ap.parse_args(argv)
    done = {}
    if args.out.exists():
        for line in args.out.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["index"]] = row
    todo = [t for t in (args.tiles if args.tiles is not None else range(N_TILES)) if t not in done]
    with ProcessPoolExecutor(max_workers=max(1, args.processes)) as pool:
        futures = [pool.submit(_one, t) for t in todo]
        for fut in as_completed(futures):
            row = fut.result()
            done[row["index"]] = row
            with args.out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
    sys.path.insert(0, str(TESTS))
    from test_gibbs import acceptance_verdict

    ok, text = acceptance_verdict([done[t] for t in sorted(done)])
    print(text)
    return 0 if ok else (2 if len(done) < N_TILES else 1)


if __name__ == "__main__":
    sys.exit(main())
