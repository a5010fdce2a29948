"""`critbatch data list|download`: the datasets the workloads read, under one data root."""

from __future__ import annotations

import argparse

from trainables.datasets import images
from trainables.datasets.download import SOURCES, download


def _cmd_list(args: argparse.Namespace) -> int:
    root, source = images.data_root(args.root or "")
    print(f"data root: {root} (from {source})")
    width = max(len(n) for n in SOURCES)
    for name, s in SOURCES.items():
        state = "present" if s.present(root) else "missing"
        print(f"  {name:<{width}}  {state:<7}  {s.size:>7}  {s.description}")
    print("get one with: critbatch data download <dataset> [--root DIR]")
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    root, _ = images.data_root(args.root or "")
    print(download(args.dataset, root, force=args.force))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser(
        "data",
        help="list and download the datasets the workloads read",
        description="Datasets live under one data root: a job's data_root field, else "
        "$CRITBATCH_DATA, else ~/.critbatch/data.",
    )
    sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    root_help = "data root (default: $CRITBATCH_DATA, else ~/.critbatch/data)"

    ls = sub.add_parser("list", help="the datasets, and which are present under the data root")
    ls.add_argument("--root", default="", help=root_help)
    ls.set_defaults(func=_cmd_list)

    dl = sub.add_parser("download", help="fetch a dataset into the data root (needs internet)")
    dl.add_argument("dataset", choices=sorted(SOURCES), help="dataset to fetch")
    dl.add_argument("--root", default="", help=root_help)
    dl.add_argument("--force", action="store_true", help="fetch even if the files are present")
    dl.set_defaults(func=_cmd_download)
