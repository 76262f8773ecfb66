"""Rebuild the embedded demo corpus in ``data/corpus/`` from Debian packages.

The demo must run on a fresh machine with no model or data hub, so the corpus
is committed to the repository (about 2 MB compressed). This script records
exactly how it was made, so anyone can regenerate or enlarge it:

    apt-get download debian-reference-{en,zh-cn,ja,de,fr,es} fortunes-zh fortunes-ru
    python scripts/build_demo_corpus.py --debs DIR_WITH_DEBS --out data/corpus

Real text comes from the Debian Reference (Osamu Aoki et al., GPL-2+) in six
languages and from the classical Chinese poems in ``fortunes-zh``. On top of
it the script plants what a web crawl contains, with ground truth in
``planted.jsonl`` so that tests can score cleaning and deduplication:
exact duplicates, near duplicates at known edit rates, boilerplate, very short
pages, wrong-language pages (Russian fortunes), binary-ish junk and a few
malformed JSON lines. Everything is seeded: the output is byte-identical
across runs.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import json
import random
import re
import subprocess
import tempfile
from pathlib import Path

LANGS = {"en": "en", "zh-cn": "zh", "ja": "ja", "de": "de", "fr": "fr", "es": "es"}
SOURCE_OF_LANG = {"en": "en_docs", "zh": "zh_docs", "ja": "multilingual_docs", "de": "multilingual_docs",
                  "fr": "multilingual_docs", "es": "multilingual_docs"}
HEADING = re.compile(r"^(\d+(\.\d+)+\.\s|Chapter \d+|Kapitel \d+|Chapitre \d+|Capítulo \d+|第\s*\d+\s*章|Appendix|付録|附录)")
CJK = {"zh", "ja"}
ANSI = re.compile(r"\x1b\[[0-9;]*m")
MIN_DOC_CHARS = 400


def extract(debs: Path, root: Path) -> None:
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)


def unwrap(lines: list[str], lang: str) -> str:
    """Join hard-wrapped lines into paragraphs (no space between CJK lines)."""
    joiner = "" if lang in CJK else " "
    paragraphs, current = [], []
    for raw in lines + [""]:
        line = raw.strip()
        if not line:
            if current:
                paragraphs.append(joiner.join(current))
                current = []
            continue
        if line.startswith(("* ", "• ")) and current:
            paragraphs.append(joiner.join(current))
            current = []
        current.append(line)
    return "\n".join(paragraphs)


def debian_reference_docs(root: Path, deb_lang: str) -> list[str]:
    path = root / "usr/share/debian-reference" / f"debian-reference.{deb_lang}.txt.gz"
    lang = LANGS[deb_lang]
    lines = gzip.decompress(path.read_bytes()).decode("utf-8").splitlines()
    sections: list[list[str]] = [[]]
    for line in lines:
        if HEADING.match(line) and sections[-1]:
            sections.append([])
        sections[-1].append(line)
    docs, pending = [], ""
    for section in sections[1:]:  # section 0 is the table of contents
        text = unwrap(section, lang)
        pending = f"{pending}\n{text}".strip() if pending else text
        if len(pending) >= MIN_DOC_CHARS:
            docs.append(pending)
            pending = ""
    return docs


def fortune_entries(path: Path) -> list[str]:
    text = ANSI.sub("", path.read_text(encoding="utf-8", errors="replace"))
    return [e.strip() for e in text.split("\n%\n") if e.strip()]


def poem_anthologies(root: Path, per_doc: int = 6) -> list[str]:
    base = root / "usr/share/games/fortunes"
    docs = []
    for name in ("tang300", "song100", "chinese"):
        entries = fortune_entries(base / name)
        for i in range(0, len(entries), per_doc):
            docs.append("\n\n".join(entries[i:i + per_doc]))
    return docs


def russian_pages(root: Path, n: int, rng: random.Random) -> list[str]:
    entries = [e for e in fortune_entries(root / "usr/share/games/fortunes/ru/2001.03") if len(e) > 80]
    rng.shuffle(entries)
    return ["\n\n".join(entries[i * 5:(i + 1) * 5]) for i in range(n)]


def edit_text(text: str, rate: float, lang: str, rng: random.Random) -> str:
    """Change about ``rate`` of the words (or characters for CJK): substitute, delete, insert."""
    units = list(text) if lang in CJK else text.split(" ")
    pool = units[:]
    out = []
    for unit in units:
        r = rng.random()
        if r < rate / 3:
            continue  # deletion
        if r < 2 * rate / 3:
            out.append(rng.choice(pool))  # substitution
            continue
        out.append(unit)
        if r < rate:
            out.append(rng.choice(pool))  # insertion
    return ("" if lang in CJK else " ").join(out)


BOILERPLATE = [
    "Home | About us | Contact | Privacy policy | Terms of use\nSubscribe to our newsletter!\n"
    "This website uses cookies to improve your experience. Accept all cookies.\n"
    "Copyright 2024 All rights reserved. Powered by WordPress.\nLogin | Register | Forgot password?\n" * 3,
    "首页 | 关于我们 | 联系我们 | 隐私政策\n点击这里登录 点击这里注册\n版权所有 © 2024 保留所有权利\n"
    "扫码关注我们的公众号\n" * 4,
    "Buy now! Buy now! Buy now! Best price best price best price. Click here click here click here. " * 12,
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit.\n" * 20,
]
SHORT = ["Click here.", "Page not found", "404", "Loading...", "加载中……", "Home", "Read more »", "登录"]


def binary_junk(rng: random.Random, kind: int) -> str:
    blob = bytes(rng.getrandbits(8) for _ in range(1500))
    if kind == 0:
        return base64.b64encode(blob).decode()
    if kind == 1:
        return "\n".join(blob[i:i + 16].hex(" ") for i in range(0, len(blob), 16))
    return blob.decode("latin-1")


def doc_id(source: str, index: int) -> str:
    return f"{source}-{index:05d}"


def build(root: Path, out: Path, seed: int) -> None:
    rng = random.Random(seed)
    records: list[dict] = []
    planted: list[dict] = []
    for deb_lang, lang in LANGS.items():
        source = SOURCE_OF_LANG[lang]
        for text in debian_reference_docs(root, deb_lang):
            records.append({"source": source, "lang_hint": lang, "text": text})
    for text in poem_anthologies(root):
        records.append({"source": "zh_classical", "lang_hint": "zh", "text": text})
    counters: dict[str, int] = {}
    for rec in records:
        counters[rec["source"]] = counters.get(rec["source"], 0) + 1
        rec["id"] = doc_id(rec["source"], counters[rec["source"]])

    originals = [r for r in records if r["source"] != "zh_classical"]
    extra: list[dict] = []

    def plant(base: dict, text: str, kind: str, **info) -> None:
        counters[base["source"]] += 1
        new = {"id": doc_id(base["source"], counters[base["source"]]), "source": base["source"],
               "lang_hint": base["lang_hint"], "text": text}
        extra.append(new)
        planted.append({"id": new["id"], "kind": kind, **info})

    for base in rng.sample(originals, 60):  # exact duplicates, some with whitespace noise
        text = base["text"] if rng.random() < 0.5 else "  " + base["text"].replace("\n", " \n") + "\n\n"
        plant(base, text, "exact_duplicate", of=base["id"])
    for rate in (0.05, 0.10, 0.20, 0.30):  # near duplicates at known edit rates
        for base in rng.sample(originals, 20):
            plant(base, edit_text(base["text"], rate, base["lang_hint"], rng), "near_duplicate",
                  of=base["id"], edit_rate=rate)
    for i in range(24):
        base = rng.choice(originals)
        plant(base, BOILERPLATE[i % len(BOILERPLATE)], "boilerplate")
    for i in range(24):
        base = rng.choice(originals)
        plant(base, SHORT[i % len(SHORT)], "too_short")
    for text in russian_pages(root, 12, rng):
        plant(rng.choice([r for r in originals if r["lang_hint"] == "en"]), text, "wrong_language", lang="ru")
    for i in range(12):
        plant(rng.choice(originals), binary_junk(rng, i % 3), "binary_junk")

    everything = records + extra
    rng.shuffle(everything)
    out.mkdir(parents=True, exist_ok=True)
    by_source: dict[str, list[dict]] = {}
    for rec in everything:
        by_source.setdefault(rec["source"], []).append(rec)
    for source, recs in sorted(by_source.items()):
        lines = [json.dumps({"id": r["id"], "text": r["text"], "lang_hint": r["lang_hint"]}, ensure_ascii=False)
                 for r in sorted(recs, key=lambda r: r["id"])]
        if source == "en_docs":  # malformed lines the pipeline must quarantine, never crash on
            lines[5:5] = ['{"id": "en_docs-broken-1", "text": "unterminated',
                          '{"id": "en_docs-broken-2", "body": "no text field"}',
                          'not json at all']
            planted += [{"id": f"en_docs:line{6 + k}", "kind": "malformed"} for k in range(3)]
        payload = ("\n".join(lines) + "\n").encode("utf-8")
        with open(out / f"{source}.jsonl.gz", "wb") as fh:  # mtime=0: byte-identical rebuilds
            with gzip.GzipFile(fileobj=fh, mode="wb", mtime=0) as gz:
                gz.write(payload)
    with open(out / "planted.jsonl", "w", encoding="utf-8") as fh:
        for row in planted:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary = {s: len(r) for s, r in sorted(by_source.items())}
    digest = hashlib.sha256(b"".join((out / f"{s}.jsonl.gz").read_bytes() for s in summary)).hexdigest()
    print(json.dumps({"documents": summary, "planted": len(planted), "sha256": digest}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debs", type=Path, required=True, help="folder holding the downloaded .deb files")
    parser.add_argument("--out", type=Path, default=Path("data/corpus"))
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        extract(args.debs, Path(tmp))
        build(Path(tmp), args.out, args.seed)


if __name__ == "__main__":
    main()
