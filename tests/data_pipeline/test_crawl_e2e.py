"""End to end: a Common Crawl WARC from the command line, and WuDao + CulturaX deduplicated in one run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from data_pipeline.chinese_script import to_traditional

from .conftest import REPO_ROOT, load_config, output_rows, read_corpus
from .crawl_data import BLOCKLIST, WARC, expected, generator


def test_warc_from_the_command_line(tmp_path):
    """Starts its own Ray, so its workers import this checkout's package (PYTHONPATH) whatever is installed."""
    (tmp_path / "crawl").mkdir()
    shutil.copy(WARC, tmp_path / "crawl" / "CC-MAIN-test-00000.warc.gz")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-m", "data_pipeline", "input=crawl/*.warc.gz", "output=out",
                           f"url_filter.blocklist={BLOCKLIST}", "ray.progress=false"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["input"] == 25 == report["kept"] + report["heldout"] + report["dropped_total"] + report["quarantined"]
    assert report["quarantined"] == 0
    assert {r: e["count"] for r, e in report["dropped"]["warc"].items()} == {
        "warc_warcinfo_record": 1, "warc_request_record": 4, "warc_metadata_record": 4, "http_404": 1, "http_301": 1,
        "not_html": 1, "truncated": 1}
    assert report["dropped"]["url_filter"] == {"blocklisted_domain:gambling": report["dropped"]["url_filter"][
        "blocklisted_domain:gambling"]} and report["dropped"]["url_filter"]["blocklisted_domain:gambling"]["count"] == 2
    assert report["dropped"]["dedup"]["exact_duplicate"]["count"] == 2  # both Traditional/Simplified pairs
    shards = output_rows(tmp_path / "out", "shards")
    rows = shards + output_rows(tmp_path / "out", "heldout")
    assert len(rows) == 8
    urls = {r["url"] for r in rows}
    kept_expected = {u for u, what in expected().items() if what.startswith("kept")}
    assert len(urls & kept_expected) >= 6 and not any("blocked" in u or "badsite" in u for u in urls)
    pairs = [("https://www.jiaocheng.example.tw/debian/4.html", "https://www.kaiyuan.example.cn/linux/4.html"),
             ("http://www.kaiyuan.example.cn/linux/1.html", "https://mirror.example.tw/kaiyuan/1.html")]
    assert all(len(urls & set(pair)) == 1 for pair in pairs)  # one page of each mirror pair survives
    assert {r["domain"] for r in rows} >= {"linuxnotes.example.org", "kaiyuan.example.cn", "wiki.example.hk"}
    assert {r["zh_script"] for r in rows if r["lang"] == "zh"} == {"hans", "hant"}
    assert report["kept_by_script"] == {s: sum(r["zh_script"] == s for r in shards) for s in ("hans", "hant")}
    module = generator()
    for r in rows:
        assert not [b for b in module.BOILERPLATE if b in r["text"]], r["url"]
        assert "\ufffd" not in r["text"]
    gbk = next(r for r in rows if r["url"] == "http://bbs.kaiyuan.example.cn/thread-3.html")
    assert "下面是一些 Unix 文件基础" in gbk["text"] and json.loads(gbk["meta"])["charset"] == "gb18030 (detected)"
    big5 = next(r for r in rows if r["url"] == "https://wiki.example.hk/debian/5.html")
    assert "分頁程式" in big5["text"] and big5["zh_script"] == "hant"


def test_wudao_array_and_culturax_jsonl_are_deduplicated_together(ray_cluster, tmp_path):
    from data_pipeline.pipeline import run

    docs = [r for r in read_corpus("zh_docs") if r["text"].count("。") > 10][:6]
    wudao = [{"id": i, "uniqueKey": f"wd-{i}", "title": f"第{i}篇", "content": d["text"], "dataType": "技术"}
             for i, d in enumerate(docs[:4])]
    culturax = [{"text": docs[0]["text"], "url": "https://zh.example.org/a", "timestamp": "2021-03-04", "source": "mC4"},
                {"text": to_traditional(docs[1]["text"]), "url": "https://tw.example.org/b", "timestamp": "2022-01-01",
                 "source": "OSCAR-2019"},
                {"text": docs[4]["text"], "url": "https://www.example.net/c", "timestamp": "2023-05-06", "source": "mC4"}]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "wudao_000.json").write_text(json.dumps(wudao, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "in" / "culturax_zh_part_00001.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in culturax), encoding="utf-8")
    cfg = load_config(input=str(tmp_path / "in"), output=str(tmp_path / "out"), **{
        "read.sources.wudao": {"files": "wudao_*.json", "text_field": "content", "title_field": "title",
                               "id_field": "uniqueKey", "meta_fields": ["dataType"]},
        "read.sources.culturax": {"files": "culturax_*", "meta_fields": ["timestamp", "source"]},
        "heldout.fraction": 0.0})
    summary = run(cfg)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert summary["input"] == 7 and summary["quarantined"] == 0
    dedup = report["dropped"]["dedup"]
    assert sum(e["count"] for e in dedup.values()) == 2  # docs[0] and the Traditional docs[1] are copies of WuDao's
    rows = {r["id"]: r for r in output_rows(tmp_path / "out", "shards")}
    urls = {r["url"] for r in rows.values()}
    assert len(rows) == 5 and ("wd-0" in rows) != ("https://zh.example.org/a" in urls)  # one of each pair is left
    assert ("wd-1" in rows) != ("https://tw.example.org/b" in urls)
    assert set(report["kept_by_source"]) == {"wudao", "culturax"}  # never mC4/OSCAR: the record field is metadata
    assert json.loads(rows["wd-2"]["meta"]) == {"dataType": "技术"} and rows["wd-2"]["text"].startswith("第2篇\n\n")
    cx = next(r for r in rows.values() if r["url"] == "https://www.example.net/c")
    assert cx["url"] == "https://www.example.net/c" and cx["domain"] == "example.net"
    assert json.loads(cx["meta"]) == {"source": "mC4", "timestamp": "2023-05-06"}
