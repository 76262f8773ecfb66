"""WARC -> text throughput and quality: our reader (Trafilatura or Resiliparse) vs datatrove's WarcReader + Trafilatura.

    python bench/data_pipeline/warc_extract.py --pages 300 --out /tmp/warc_bench

Builds two WARCs, one of Chinese and one of English pages, with the page
template of scripts/make_test_warc.py (navigation, sidebar with ads, cookie
banner, footer around an article of 3-12 paragraphs of the Debian Reference
from data/corpus); a third of the Chinese pages are GBK, a sixth Big5
(Traditional), the rest UTF-8, and charsets are declared in the HTTP header,
in a meta tag or not at all in turn. Then, per file and reader:

- pages/CPU-s: HTML responses per CPU second of WARC -> text (process CPU,
  plus the CPU of child processes: datatrove extracts in a sandbox process),
  reading and decompression included;
- leak: share of pages whose text holds a boilerplate string (one the article does not hold itself);
- recall: share of the article's paragraphs (12+ characters) found in the text;
- bad: share of pages with a U+FFFD or none of their article (mojibake or a
  dropped page).

datatrove is an optional bench dependency (pyproject ``bench``); its WarcReader
also needs python-magic and faust-cchardet.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import io
import json
import random
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # this checkout's data_pipeline, whatever is installed


def _generator():
    spec = importlib.util.spec_from_file_location("make_test_warc", REPO / "scripts" / "make_test_warc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _corpus(name: str) -> list[str]:
    out = []
    with gzip.open(REPO / "data" / "corpus" / f"{name}.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            try:
                text = json.loads(line).get("text")
            except json.JSONDecodeError:
                continue
            if isinstance(text, str):
                out.extend(p for p in text.split("\n") if len(p.strip()) >= 12)
    return out


def build(out: Path, pages: int, seed: int = 0) -> dict[str, list[list[str]]]:
    """Write zh.warc.gz and en.warc.gz; return each file's articles (paragraph lists) in order."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    gen = _generator()
    rng = random.Random(seed)
    articles: dict[str, list[list[str]]] = {}
    for lang, corpus in (("zh", _corpus("zh_docs")), ("en", _corpus("en_docs"))):
        articles[lang] = []
        with open(out / f"{lang}.warc.gz", "wb") as fh:
            writer = WARCWriter(fh, gzip=True)
            for i in range(pages):
                paras = rng.sample(corpus, rng.randint(3, 12))
                codec, where = "utf-8", ("header", "meta", "none")[i % 3]
                if lang == "zh" and i % 6 in (1, 2):
                    codec = "gbk"
                elif lang == "zh" and i % 6 == 3:
                    codec, paras = "big5", [gen.traditional(p) for p in paras]
                html = gen.page(f"Page {i}", "\n".join(paras), "zh-CN" if lang == "zh" else "en",
                                f'<meta charset="{codec}">' if where == "meta" else "")
                ctype = f"text/html; charset={codec}" if where == "header" else "text/html"
                http = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
                rec = writer.create_warc_record(f"https://site{i % 37}.example.com/{lang}/{i}.html", "response",
                                                payload=io.BytesIO(gen.encode(html, codec)), http_headers=http,
                                                warc_headers_dict={"WARC-Identified-Payload-Type": "text/html"})
                writer.write_record(rec)
                articles[lang].append(paras)
    return articles


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def ours(path: Path, extractor: str) -> list[tuple[str, str]]:
    from data_pipeline.readers import iter_records

    cfg = {"max_record_bytes": 1 << 26, "warc": {"extractor": extractor}}
    return [(r["url"], r["text"]) for r in iter_records(str(path), cfg, "bench") if r["kind"] == "record"]


def datatrove_reader(path: Path) -> list[tuple[str, str]]:
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.readers import WarcReader

    reader = WarcReader(str(path.parent), glob_pattern=path.name, compression=None)
    extractor = Trafilatura(favour_precision=True, timeout=10.0)
    return [(d.metadata.get("url"), d.text) for d in extractor.run(reader.run())]


def score(results: list[tuple[str, str]], articles: list[list[str]], boilerplate: list[str]) -> dict:
    by_index = {int(url.rsplit("/", 1)[1].split(".")[0]): text for url, text in results}
    leak = recall = bad = 0.0
    for i, paras in enumerate(articles):
        text = by_index.get(i, "")
        article = "\n".join(paras)
        leak += any(b in text and b not in article for b in boilerplate)  # the article may quote one itself
        found = sum(p.strip() in text for p in paras) / len(paras)
        recall += found
        bad += ("\ufffd" in text) or found == 0
    n = len(articles)
    return {"leak": leak / n, "recall": recall / n, "bad": bad / n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=300)
    ap.add_argument("--out", default="/tmp/warc_bench")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    articles = build(out, args.pages)
    boilerplate = _generator().BOILERPLATE
    readers = {"ours (trafilatura)": lambda p: ours(p, "trafilatura"),
               "ours (resiliparse)": lambda p: ours(p, "resiliparse")}
    try:
        import cchardet  # noqa: F401
        import datatrove  # noqa: F401
        import magic  # noqa: F401

        readers["datatrove WarcReader + Trafilatura"] = datatrove_reader
    except ImportError as exc:
        print(f"datatrove not measured: {exc}")
    rows = []
    for name, fn in readers.items():
        fn(out / "en.warc.gz")  # warm up: imports, lxml and Trafilatura's first-call setup
        for lang in ("zh", "en"):
            cpu, wall = _cpu(), time.perf_counter()
            results = fn(out / f"{lang}.warc.gz")
            cpu, wall = _cpu() - cpu, time.perf_counter() - wall
            rows.append({"reader": name, "lang": lang, "pages": len(articles[lang]), "docs": len(results),
                         "pages_per_cpu_s": round(len(articles[lang]) / cpu, 1), "wall_s": round(wall, 2),
                         **{k: round(v, 3) for k, v in score(results, articles[lang], boilerplate).items()}})
            print(json.dumps(rows[-1]), flush=True)
    print("\n| reader | lang | pages/CPU-s | docs/pages | boilerplate leak | article recall | mojibake or lost |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['reader']} | {r['lang']} | {r['pages_per_cpu_s']} | {r['docs']}/{r['pages']} | "
              f"{r['leak']:.0%} | {r['recall']:.0%} | {r['bad']:.0%} |")


if __name__ == "__main__":
    main()
