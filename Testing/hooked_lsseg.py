"""``lsseg train ...`` with test hooks, for tests that run training in a child process or under torchrun:

    python Testing/hooked_lsseg.py [--sleep-per-step S] [--weights-hash-dir DIR] -- train labelsharing ...

The hooks are an ``on_step`` callback of the training API (``train_helpers.step_hooks``), never product flags."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from train_helpers import lsseg_hooked  # noqa: E402


def main(argv: list[str]) -> int:
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sleep-per-step", type=float, default=0.0)
    parser.add_argument("--weights-hash-dir", type=Path)
    hooks = parser.parse_args(argv[:split])
    return lsseg_hooked(
        *argv[split + 1 :], sleep_per_step=hooks.sleep_per_step, weights_hash_dir=hooks.weights_hash_dir
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
