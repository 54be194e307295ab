"""`speech-enhance index`: write the shard indexes of an existing dataset (argument parsing only)."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "index", help="write the record index of every shard of a dataset (for the PyTorch and grain readers)",
        description=("Write DATASET's shard indexes (SHARD.index: the offset and length of every record; "
                     "docs/readers.md) and list them in its dataset_info.json, rewritten atomically. Datasets "
                     "built by `speech-enhance dataset` already have them; this adds them to older ones. "
                     "Existing indexes that match their shards are kept."))
    p.add_argument("dataset", metavar="DATASET", help="dataset directory (local or gs://) with dataset_info.json")
    p.add_argument("--overwrite", action="store_true", help="rewrite every index, even ones that match their shards")
    p.set_defaults(func=run_index_command)


def run_index_command(args, extra) -> int:
    from tfrecord_schema.shard_writer import index_dataset

    dataset = index_dataset(args.dataset, overwrite=args.overwrite)
    shards = sum(len(split.shards) for split in dataset.splits.values())
    print(f"indexed {args.dataset}: {shards} shard(s), "
          f"{sum(split.num_examples for split in dataset.splits.values())} records")
    return 0
