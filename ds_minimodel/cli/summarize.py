"""Summarise a training run: first and last validation losses, and a PNG of the curves.

    python launchers/summarize.py runs/demo [--require-drop 0.5]

With --require-drop X it exits 1 unless every validation loss fell by at least X nats. For an MLM
run it also gives the unigram cross-entropy of its validation split and each head's distance below
it (nats per token and bits per character), written to body.json (and final/body.json, where a
study reads it); with --require-body-gate it exits 1 unless the final head passed the study gate.
"""

import argparse
import sys

from ds_minimodel.cli.common import run_main


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--require-drop", type=float, default=None, metavar="NATS")
    p.add_argument("--require-body-gate", action="store_true",
                   help="exit 1 unless the final head is GATE_NATS below unigram (analysis/body.py)")
    args = p.parse_args(argv)

    def body():
        from ds_minimodel.analysis.report import eval_summary, plot_losses

        summary = eval_summary(args.run_dir)
        failed = []
        for key, (first, last) in summary.items():
            print(f"{key:>20}: {first:.3f} -> {last:.3f}  (drop {first - last:+.3f})")
            if args.require_drop is not None and first - last < args.require_drop:
                failed.append(key)
        print(f"plot: {plot_losses(args.run_dir)}")
        if any(k.startswith("valid_final_loss") for k in summary):
            from ds_minimodel.analysis.body import report_lines, write_body_report

            report = write_body_report(args.run_dir)
            print("\n".join(report_lines(report)))
            if args.require_body_gate and not report["gate"]["passed"]:
                print("FAILED: the final head is less than the gate below unigram", file=sys.stderr)
                sys.exit(1)
        if failed:
            print(f"FAILED: {', '.join(failed)} fell by less than {args.require_drop}", file=sys.stderr)
            sys.exit(1)

    run_main(body)


if __name__ == "__main__":
    main()
