"""`speech-enhance select`: a thin wrapper over `predictor.evaluation.selection.select`.

Nothing heavy is imported at module level, so `speech-enhance --help` stays fast.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "select", help="pick the model to ship from an evaluate run on the validation set",
        description="Compare each candidate system with the reference (the model it would replace) on the items of "
                    "an `evaluate` results.json: per domain (overall, each speech corpus, each noise group, each "
                    "SNR bin) and per metric (PESQ, STOI, SI-SDR), the mean paired difference and its "
                    "paired-bootstrap interval. A candidate whose whole interval lies below 0, by a mean loss beyond "
                    "one unit of the metric, in any domain large enough to count is vetoed; of the rest, the one with the highest composite (the corpus and "
                    "noise-group differences in the rule's units) is picked if that composite is above 0, else the "
                    "reference stays. The rule and its constants are docs/selection.md "
                    "(predictor.evaluation.selection.SelectionRule). Writes selection.json and selection.md into "
                    "--output and prints the pick.")
    p.add_argument("results", metavar="RESULTS_JSON",
                   help="the results.json written by `speech-enhance evaluate --output DIR` (local or gs://)")
    p.add_argument("--reference", required=True, metavar="NAME",
                   help="the system in the results that a candidate would replace (the model shipped now)")
    p.add_argument("--candidates", required=True, nargs="+", metavar="NAME",
                   help="systems in the results to choose from; a tie goes to the one listed first")
    p.add_argument("--output", required=True, metavar="DIR", help="folder (or gs:// prefix) for the selection record")
    p.set_defaults(func=_select)


def _select(args: argparse.Namespace, extra: list[str]) -> int:
    from predictor.evaluation.selection import load_results, select
    from predictor.evaluation.selection_report import write_selection

    results = load_results(args.results)
    try:
        record = select(results, args.reference, args.candidates)
    except ValueError as err:  # the library names its arguments; the command names its flags and file
        raise ValueError(f"{args.results}: " + str(err).replace("candidates must", "--candidates must")) from err
    written = write_selection(record, args.output)
    for name, summary in record["candidates"].items():
        state = f"vetoed ({len(summary['veto'])} domain/metric)" if summary["veto"] else f"{summary['composite']:+.3f}"
        print(f"{name}: {state}")
    print(f"pick: {record['pick']} ({record['why']})")
    print("written: " + ", ".join(written.values()))
    return 0
