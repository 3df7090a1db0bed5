"""`python -m repgeom.extract`: extract one condition's last-token representations into a zarr store group.

Under several ranks launch it with `torchrun --nproc_per_node N -m repgeom.extract …` (or srun with
MASTER_ADDR/MASTER_PORT exported); each rank writes its own row chunks. Rerun the same command to resume.
"""
from __future__ import annotations

import argparse
import sys

from repgeom.errors import entry_point
from repgeom.extract.hooks import HOOKS
from repgeom.extract.job import ExtractionJob, ExtractionSettings
from repgeom.shipped import deepspeed_config_arg
from repgeom.store.layout import STORE_DTYPES, STORE_NAME


def layer_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices such as 0,8,16; got {text!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m repgeom.extract", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="hub id or local save_pretrained folder")
    parser.add_argument("--revision", help="hub revision of --model")
    parser.add_argument("--prompts", required=True, help="prompts parquet written by the data stage")
    parser.add_argument("--store", required=True, help=f"zarr store (one per run), e.g. results/{STORE_NAME}")
    parser.add_argument("--group", required=True, help="MODEL/CONDITION group inside the store")
    parser.add_argument("--accuracy-out", required=True, help="per-prompt accuracy parquet, written last")
    parser.add_argument("--lens-out", help="parquet of the logit lens on the answer letters by layer (accuracy, mean "
                                           "gold-letter probability); not written without this option")
    parser.add_argument("--adapter", help="peft adapter folder (LoRA, prompt tuning, prefix tuning)")
    parser.add_argument("--hook", choices=HOOKS, default="block_input_norm")
    parser.add_argument("--store-dtype", choices=STORE_DTYPES, default="float32")
    parser.add_argument("--model-dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto",
                        help="auto: bfloat16 on a GPU and on a CPU with native bf16, else float32")
    parser.add_argument("--max-batch-tokens", type=int, help="padded tokens per batch (default 16384 GPU, 2048 CPU)")
    parser.add_argument("--max-length", type=int, help="truncate prompts from the left to this many tokens "
                                                       "(default: the model's max_position_embeddings)")
    parser.add_argument("--chunk-rows", type=int, help="rows per store chunk (default: about 16 MiB per layer)")
    parser.add_argument("--token-sample-layers", type=layer_list, default=[], help="layers of the all-token sample")
    parser.add_argument("--token-sample-size", type=int, default=0, help="tokens in the all-token sample")
    parser.add_argument("--seed", type=int, default=0, help="seed of the token sample")
    parser.add_argument("--min-shared-prefix", type=int, default=32,
                        help="prompts that begin with at least this many equal tokens compute them once, then "
                             "continue from their key/value cache (0: every prompt runs whole)")
    parser.add_argument("--zero3", metavar="CONFIG", type=deepspeed_config_arg,
                        help="DeepSpeed ZeRO-3 config (shipped: zero3, or a JSON file): partition the model over ranks")
    parser.add_argument("--device-map", choices=("auto",), help="shard layers over this process's GPUs")
    parser.add_argument("--wait-for-lock", action="store_true", help="if another live process writes the same output, wait for it to finish (default: stop, naming it)")
    return parser.parse_args(argv)


@entry_point("repgeom.extract")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = ExtractionSettings(
        hook=args.hook, store_dtype=args.store_dtype, model_dtype=args.model_dtype,
        max_batch_tokens=args.max_batch_tokens, max_length=args.max_length, chunk_rows=args.chunk_rows,
        token_sample_layers=args.token_sample_layers, token_sample_size=args.token_sample_size, seed=args.seed,
        min_shared_prefix=args.min_shared_prefix)
    ExtractionJob(args.model, args.prompts, args.store, args.group, args.accuracy_out, settings,
                  adapter=args.adapter, revision=args.revision, zero3_config_path=args.zero3,
                  device_map=args.device_map, wait_for_lock=args.wait_for_lock, lens_out=args.lens_out).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
