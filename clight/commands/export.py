"""``clight export``: the final model of a `clight fit` run in Hugging Face format (save_pretrained, safetensors).

Rebuilds the module from RUN_DIR/config.yaml, loads the weights of the last finished task from
RUN_DIR/stream.pt and writes OUT/model (a plain `transformers` folder with the tokenizer), OUT/adapters (peft
adapters, unless --merge), OUT/head.safetensors (classification) and OUT/export.json. Run it from the folder the
run was started in (data paths in the config are relative to it). Loading the result: see :mod:`clight.export`.

    clight export runs/lora --out exported/lora              # base + peft adapter(s)
    clight export runs/lora --out exported/lora_merged --merge
    clight export runs/lora_per_task --out exported/task2 --merge --adapter task_2
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clight export", description=__doc__.split("\n\n")[0].removeprefix(
        "``clight export``: "), formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("run_dir", help="the `stream.run_dir` of a finished (or partly finished) run")
    parser.add_argument("--out", required=True, help="export folder")
    parser.add_argument("--merge", action="store_true", help="merge the adapters into the weights (peft runs)")
    parser.add_argument("--adapter", action="append", default=None,
                        help="adapter to export or merge (repeatable; default: all, or the active ones with --merge)")
    args = parser.parse_args(argv)
    from clight.errors import ClightConfigError
    from clight.export import export_run

    try:
        manifest = export_run(args.run_dir, args.out, merge=args.merge, adapters=args.adapter)
    except ClightConfigError as err:
        print(f"clight export: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({k: manifest[k] for k in ("model", "merged", "adapters", "completed_stages")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
