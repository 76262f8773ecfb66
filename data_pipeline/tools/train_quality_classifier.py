"""Train the fastText quality classifier from jsonl files of positive and negative examples.

    python -m data_pipeline.tools.train_quality_classifier --positive good.jsonl --negative web.jsonl \\
        --out data/models/quality_en.ftz

DCLM's recipe: positives are text you want more of (OpenHermes answers, ELI5),
negatives a random sample of the crawl being filtered. Any tokenisation
happens inside (``model_text``), so Chinese needs no segmenter.
"""

from __future__ import annotations

import argparse
import json

from data_pipeline.quality_model import TRAIN_DEFAULTS, train
from data_pipeline.tools.jsonl import read_texts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--positive", nargs="+", required=True, help="jsonl(.gz) files of high-quality examples")
    ap.add_argument("--negative", nargs="+", required=True, help="jsonl(.gz) files of low-quality examples")
    ap.add_argument("--out", required=True, help="model file: .ftz (quantised, small) or .bin (--no-quantize)")
    ap.add_argument("--text-field", default="text")
    ap.add_argument("--no-quantize", action="store_true", help="keep the full-size model")
    for key, value in TRAIN_DEFAULTS.items():
        ap.add_argument(f"--{key}", type=type(value), default=value)
    args = ap.parse_args(argv)
    params = {k: getattr(args, k) for k in TRAIN_DEFAULTS}
    counts = train(read_texts(args.positive, args.text_field), read_texts(args.negative, args.text_field),
                   args.out, quantize=not args.no_quantize, **params)
    print(json.dumps({"out": args.out, **counts}))


if __name__ == "__main__":
    main()
