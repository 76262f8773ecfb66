"""Build an n-gram LM as an ARPA file from jsonl text, and the perplexity cut-offs of a reference sample.

    python -m data_pipeline.tools.build_lm --input wiki_zh.jsonl --out lm_zh.arpa --order 3
    python -m data_pipeline.tools.build_lm --model lm_zh.arpa --reference sample_zh.jsonl   # cut-offs only

The estimator is ``data_pipeline.tools.arpa`` (interpolated Kneser-Ney, pure
Python): right for models of a few MB. For a real model run KenLM's ``lmplz``
on the text as ``model_text.lm_lines`` writes it (one line per line, tokens
separated by spaces) and point the config at the .arpa or ``build_binary``
output. The cut-offs are CCNet's: the 33rd and 66th percentile of the
reference documents' perplexities; paste them into ``perplexity.langs.<lang>.cutoffs``.
"""

from __future__ import annotations

import argparse
import json

from data_pipeline.model_text import lm_lines
from data_pipeline.perplexity import load_lm, percentile_cutoffs, perplexity
from data_pipeline.tools.arpa import build_arpa
from data_pipeline.tools.jsonl import read_texts


def reference_cutoffs(model_path: str, texts: list[str], max_chars: int | None = None) -> list[float]:
    """CCNet's head/middle/tail cut-offs from the perplexities of ``texts`` under the model."""
    model = load_lm(model_path)
    values = [v for v in (perplexity(model, t, max_chars) for t in texts) if v is not None]
    return percentile_cutoffs(values)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", nargs="*", default=[], help="jsonl(.gz) training text")
    ap.add_argument("--out", help="ARPA file to write (with --input)")
    ap.add_argument("--model", help="existing model for --reference (default: --out)")
    ap.add_argument("--reference", nargs="*", default=[], help="jsonl(.gz) sample to compute the cut-offs on")
    ap.add_argument("--order", type=int, default=3)
    ap.add_argument("--min-count", type=int, default=2, help="drop n-grams (order >= 2) seen fewer times")
    ap.add_argument("--min-word-count", type=int, default=2, help="rarer words train <unk>")
    ap.add_argument("--text-field", default="text")
    args = ap.parse_args(argv)
    result: dict = {}
    if args.input:
        if not args.out:
            ap.error("--input needs --out")
        sentences = [toks for t in read_texts(args.input, args.text_field) for toks in lm_lines(t)]
        result["ngrams"] = build_arpa(sentences, args.out, args.order, args.min_count, args.min_word_count)
    if args.reference:
        model = args.model or args.out
        if not model:
            ap.error("--reference needs --model or --out")
        result["cutoffs"] = reference_cutoffs(model, list(read_texts(args.reference, args.text_field)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
