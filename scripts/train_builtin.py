"""Retrain the built-in digits teacher and write `coordinator/models/data/digits_cnn.pt`.

Usage: ``python scripts/train_builtin.py [--out PATH]``. Trains `DigitsCNN(1.0)` with the settings in
`coordinator.models.builtin` (deterministic for a given torch build), prints the time and the test
accuracy, and refuses to write weights below 95% test accuracy (exit status 1).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from coordinator.models.builtin import TEACHER_WEIGHTS, DigitsCNN, digits_splits, train

MIN_ACCURACY = 0.95


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=TEACHER_WEIGHTS, help="where to write the state_dict")
    args = parser.parse_args(argv)
    splits = digits_splits()
    model = DigitsCNN(1.0)
    started, cpu_started = time.perf_counter(), time.process_time()
    accuracy = train(model, splits, log=print)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    params = sum(p.numel() for p in model.parameters())
    # CPU time too: on a machine shared with other jobs the wall time says more about them than about us.
    print(f"trained DigitsCNN(1.0), {params} parameters, in {seconds:.1f} s wall / {cpu_seconds:.1f} s CPU "
          f"({torch.get_num_threads()} threads): test accuracy {accuracy:.4f} ({len(splits.test)} images)")
    if accuracy < MIN_ACCURACY:
        print(f"accuracy below {MIN_ACCURACY}; weights not written", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
