"""``python -m scoresde APP [ARGS...]``: run an app by name (train, sample, likelihood, report, bench, eval).

    python -m scoresde train data=moons train.steps=2000
    python -m scoresde sample checkpoint=outputs/train/.../checkpoints/last.pt sampler=heun
"""

import sys


def main() -> None:
    apps = {
        "train": ("scoresde.apps.train", "train_main"),
        "sample": ("scoresde.apps.sample", "main"),
        "likelihood": ("scoresde.apps.likelihood", "main"),
        "report": ("scoresde.apps.report", "main"),
        "bench": ("scoresde.apps.bench", "main"),
        "eval": ("scoresde.apps.eval", "main"),
    }
    if len(sys.argv) < 2 or sys.argv[1] not in apps:
        got = repr(sys.argv[1]) if len(sys.argv) > 1 else "none"
        print(f"usage: python -m scoresde {{{','.join(apps)}}} [ARGS...]  (unknown app: {got})", file=sys.stderr)
        sys.exit(2)
    import importlib

    module, fn = apps[sys.argv[1]]
    sys.argv = [f"scoresde-{sys.argv[1]}"] + sys.argv[2:]
    result = getattr(importlib.import_module(module), fn)()
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
