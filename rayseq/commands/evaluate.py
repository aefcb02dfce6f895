"""``rayseq eval RUN_DIR``: decode a split (or ``--src``/``--ref`` files) with a run's actor and score
it with BLEU; ``--critic`` scores the run's critic or Q-net instead. Argument parsing and printing
only: what is measured, and the run directory it reads, are described in
``rayseq.evaluation.score`` and ``rayseq.evaluation.critic``.
"""

from __future__ import annotations

import argparse
import json

from rayseq.actor_io import ACTOR_FILES
from rayseq.evaluation.critic import CRITIC_METRICS, score_run_critic
from rayseq.evaluation.score import evaluate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rayseq eval``."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory (run.json, actor_best.pt, actor_latest.pt)")
    parser.add_argument("--split", default="test", help="split of the run's task to decode (default test)")
    parser.add_argument("--beam", type=int, default=5, help="beam size; 1 = greedy (default 5)")
    parser.add_argument("--max-len", type=int, default=100, help="max decoder steps, <eos> included (default 100)")
    parser.add_argument("--batch-size", type=int, default=50, help="sentences decoded together (default 50)")
    parser.add_argument("--length-penalty", type=float, default=0.0, help="GNMT alpha; 0 = none, as in the paper")
    parser.add_argument("--src", metavar="FILE", help="tokenized source file to decode instead of --split")
    parser.add_argument(
        "--ref", metavar="FILE", action="append", default=[],
        help="tokenized reference file, line-aligned with --src; repeat for several references",
    )
    parser.add_argument("--hyp-out", metavar="FILE", help="write the hypotheses here, one per line")
    parser.add_argument("--which", choices=list(ACTOR_FILES), default="best", help="which actor file (default best)")
    parser.add_argument("--data-dir", help="data directory, overriding the one in run.json")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument(
        "--critic", action="store_true",
        help="score the run's critic (actor-critic: critic_best.pt) or Q-net (VAML: qnet.pt) on the validation "
             "split instead: held-out TD error, next-token accuracy, rank correlation with Monte-Carlo returns, "
             "entropy of softmax(Q/tau), eos margin",
    )
    parser.add_argument("--sentences", type=int, help="with --critic: validation sentences to score (default: all)")


def run(args: argparse.Namespace) -> int:
    """Run ``rayseq eval``; prints one JSON line with ``--json``, else a short summary."""
    if args.critic:
        scores = score_run_critic(args.run_dir, args.sentences, args.which, args.data_dir)
        if args.json:
            print(json.dumps(scores))
            return 0
        print(f"{scores['kind']} {scores['file']} on {scores['sentences']} validation sentences (τ = {scores['tau']:g})")
        for key, value in scores.items():
            if key in CRITIC_METRICS:
                print(f"  {key:28s} {value:.4f}   {CRITIC_METRICS[key]}")
        return 0
    result = evaluate(
        args.run_dir,
        split=args.split,
        beam=args.beam,
        max_len=args.max_len,
        batch_size=args.batch_size,
        src_file=args.src,
        ref_files=args.ref,
        hyp_out=args.hyp_out,
        which=args.which,
        length_penalty=args.length_penalty,
        progress=not args.no_progress,
        data_dir=args.data_dir,
        device=args.device,
    )
    if args.json:
        print(json.dumps(result))
        return 0
    what = result["split"] or f"{result['src_file']} ({result['references']} reference(s))"
    print(f"{what}: {result['sentences']} sentences, beam {result['beam']}, actor {result['actor']}")
    print(f"  BLEU (token ids, paper) {result['bleu']:.2f}")
    print(f"  sacreBLEU               {result['sacrebleu']:.2f}  {result['sacrebleu_signature']}")
    if "cider_d" in result:  # captioning
        print(f"  CIDEr-D                 {result['cider_d']:.3f}  (image features: {result['features']})")
    print(f"  decoding {result['seconds']:.1f} s, {result['decode_tokens_per_s']:.0f} tokens/s")
    if result["hyp_out"]:
        print(f"  hypotheses -> {result['hyp_out']}")
    return 0
