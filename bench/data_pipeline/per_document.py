"""CPU seconds per MB in one process: our per-document work vs datatrove's, on the same documents.

    python bench/data_pipeline/per_document.py OUT/input_en/en_bench_000.jsonl.gz en

Ours: ``clean_batch`` (normalise, language id, quality rules, PII, exact hash,
MinHash signature and bands) in batches of 128. datatrove: the filters that
bench.py gives it, then ``MinhashDedupSignature``'s shingling and signature
for each document the filters keep. Process CPU time, so other load on the
machine inflates it far less than wall-clock time; this isolates per-document
efficiency from orchestration (Ray Data vs datatrove's local executor).
"""
import sys, time, re
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from omegaconf import OmegaConf
import pyarrow as pa, numpy as np
from data_pipeline.config import plain
from data_pipeline.clean import clean_batch
from data_pipeline.stage1 import read_file_rows
path, lang = sys.argv[1], sys.argv[2]
cfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "configs/data_pipeline.yaml")
cfg = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"]); cfg.input="x"; cfg.output="y"
pc = plain(cfg)
rows = read_file_rows({"path": path, "key": "k", "source": "s"}, pc["read"])
mb = sum(len(r["text"].encode()) for r in rows)/1e6
tbl = pa.Table.from_pylist(rows)
clean_batch(tbl.slice(0,2), pc)
t=time.process_time()
for i in range(0, len(tbl), 128): clean_batch(tbl.slice(i,128), pc)
ours=time.process_time()-t
# datatrove
from datatrove.data import Document
from datatrove.pipeline.filters import C4QualityFilter, FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
from datatrove.utils.hashing import HashConfig
from datatrove.utils.word_tokenizers import WordTokenizer
import bench as B
B._patch_datatrove_xxhash()
CJK={"zh"}
class RegexTokenizer(WordTokenizer):
    pattern = re.compile(r"\S+") if lang not in CJK else re.compile(r"\S")
    def word_tokenize(self, text): return self.pattern.findall(text)
    def sent_tokenize(self, text): return [s for s in re.split(r"(?<=[.!?。！？])\s*", text) if s]
    def span_tokenize(self, text): return [m.span() for m in self.pattern.finditer(text)]
tok=RegexTokenizer(lang)
filters = [GopherRepetitionFilter(dup_line_frac=0.4, dup_para_frac=0.4, dup_line_char_frac=0.3, dup_para_char_frac=0.3,
    top_n_grams=((2, 0.55), (3, 0.55), (4, 0.55)), dup_n_grams=((5, 0.75), (6, 0.72), (7, 0.7), (8, 0.68), (9, 0.66), (10, 0.64)), language=tok)]
if lang not in CJK:
    filters += [GopherQualityFilter(min_doc_words=30, max_avg_word_length=14, max_symbol_word_ratio=0.3, max_non_alpha_words_ratio=0.3, language=tok),
                C4QualityFilter(filter_no_terminal_punct=False, min_num_sentences=0, min_words_per_line=0, filter_curly_bracket=False, remove_citations=False, language=tok),
                FineWebQualityFilter(line_punct_thr=0.0, short_line_thr=0.9, char_duplicates_ratio=0.3, new_line_ratio=0.5, language=tok)]
sig = MinhashDedupSignature(output_folder=str(Path(path).parent / "_dt_sig_scratch"), config=MinhashConfig(hash_config=HashConfig(precision=64), n_grams=5, num_buckets=48, hashes_per_bucket=3), language=tok)
docs=[Document(text=r["text"], id=r["id"]) for r in rows if r["text"]]
t=time.process_time(); kept=0
for d in docs:
    ok=True
    for f in filters:
        res=f.filter(d)
        if res is not True and (res is False or (isinstance(res, tuple) and res[0] is False)): ok=False; break
    if ok:
        kept+=1; sig.get_signature(sig.get_shingles(d.text))
dt=time.process_time()-t
print(f"{lang}: {mb:.2f} MB, {len(docs)} docs; ours {ours/mb:.2f} cpu-s/MB; datatrove filters+signature {dt/mb:.2f} cpu-s/MB (kept {kept}); ratio {dt/ours:.2f}")
