"""WARC/WET reading: every record becomes a document or a counted drop; HTML decoded and reduced to main text."""

from __future__ import annotations

import gzip
from collections import Counter

import pytest

from data_pipeline.html_text import decode_html, main_text
from data_pipeline.readers import iter_records

from .crawl_data import READ_CFG, WARC, WET, expected, generator


@pytest.fixture(scope="module")
def warc_rows():
    return list(iter_records(str(WARC), READ_CFG, "crawl"))


@pytest.fixture(scope="module")
def gen():
    module = generator()
    return module, module.load_texts()


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.split("\n") if len(line.strip()) >= 12]


def test_every_warc_record_is_one_row_with_a_reason(warc_rows):
    from warcio.archiveiterator import ArchiveIterator

    with open(WARC, "rb") as fh:
        n_records = sum(1 for _ in ArchiveIterator(fh))
    assert len(warc_rows) == n_records == 25
    kinds = Counter((r["kind"], r.get("reason")) for r in warc_rows)
    assert kinds == {("record", None): 12, ("drop", "warc_request_record"): 4, ("drop", "warc_metadata_record"): 4,
                     ("drop", "warc_warcinfo_record"): 1, ("drop", "http_404"): 1, ("drop", "http_301"): 1,
                     ("drop", "not_html"): 1, ("drop", "truncated"): 1}
    assert all(r["stage"] == "warc" for r in warc_rows if r["kind"] == "drop")
    assert len({r["line"] for r in warc_rows}) == n_records  # doc_id (file key + line) is unique per record


def test_documents_carry_url_domain_and_crawl_metadata(warc_rows):
    docs = {r["url"]: r for r in warc_rows if r["kind"] == "record"}
    assert set(docs) == {u for u, what in expected().items() if not what.startswith("dropped")}
    doc = docs["https://www.linuxnotes.example.org/tutorials/apt-basics"]
    assert doc["domain"] == "linuxnotes.example.org" and doc["id"].startswith("<urn:uuid:")
    assert '"warc_date": "2024-03-01T12:00:00Z"' in doc["meta"] and '"charset": "utf-8 (header)"' in doc["meta"]
    assert doc["lang_hint"] == "en" and docs["https://wiki.example.hk/debian/5.html"]["lang_hint"] == "zh"  # <html lang>


def test_boilerplate_is_not_in_the_extracted_text(warc_rows, gen):
    module, _ = gen
    for r in warc_rows:
        if r["kind"] == "record":
            leaked = [b for b in module.BOILERPLATE if b in r["text"]]
            assert not leaked, (r["url"], leaked)


@pytest.mark.parametrize("url, doc, how, script", [
    ("http://www.kaiyuan.example.cn/linux/1.html", 0, "gb18030 (header)", "s2t-none"),
    ("http://www.kaiyuan.example.cn/linux/2.html", 1, "gb18030 (meta)", "s2t-none"),
    ("http://bbs.kaiyuan.example.cn/thread-3.html", 2, "gb18030 (detected)", "s2t-none"),
    ("https://www.jiaocheng.example.tw/debian/4.html", 3, "cp950 (header)", "s2t"),
    ("https://wiki.example.hk/debian/5.html", 4, "cp950 (detected)", "s2twp"),
])
def test_gbk_and_big5_pages_decode_without_mojibake(warc_rows, gen, url, doc, how, script):
    module, texts = gen
    source = texts[module.ZH_DOCS[doc]]
    if script != "s2t-none":
        source = module.traditional(source, script)
    row = next(r for r in warc_rows if r["url"] == url and r["kind"] == "record")
    assert f'"charset": "{how}"' in row["meta"]
    assert "\ufffd" not in row["text"]
    wanted = _lines(source)
    found = [line for line in wanted if line in row["text"]]
    assert len(found) >= 0.6 * len(wanted), (len(found), len(wanted))  # precision-first extraction drops some lists


def test_charset_declared_wrong_or_missing():
    text = "镕基与喆、堃在此" * 20  # characters outside GB2312 (GBK/GB18030 only)
    body = f"<html><head><meta charset=gb2312></head><body><p>{text}</p></body></html>".encode("gbk")
    assert decode_html(body, "text/html; charset=gb2312") == (body.decode("gb18030"), "gb18030 (header)")
    assert decode_html(body)[1] == "gb18030 (meta)"
    big5 = "<html><body><p>" + "這是一個繁體中文的網頁，內容關於軟體與網路的設定。" * 10 + "</p></body></html>"
    html, how = decode_html(big5.encode("big5"))
    assert (html, how) == (big5, "cp950 (detected)")
    # declared utf-8 but really GBK: the declaration is not trusted when the bytes do not decode under it
    html, how = decode_html("<p>中文网页内容，说明系统的安装与配置方法。</p>".encode("gbk") * 10, "text/html; charset=utf-8")
    assert "中文网页内容" in html and how.endswith("(detected)")


def test_extractors_remove_navigation_and_keep_the_article():
    article = "<p>" + "The kernel schedules processes fairly across every available core of the machine. " * 4 + "</p>"
    html = (f"<html><body><nav><a href='/'>Home</a> <a href='/about'>About us</a></nav><article><h1>Scheduling</h1>"
            f"{article}{article}</article><footer>Copyright 2024 Example. All rights reserved.</footer></body></html>")
    for extractor in ("trafilatura", "resiliparse"):
        text = main_text(html, extractor)
        assert "kernel schedules processes" in text and "All rights reserved" not in text and "About us" not in text


def test_wet_conversion_records_are_taken_as_text(gen):
    module, texts = gen
    rows = list(iter_records(str(WET), READ_CFG, "crawl"))
    assert Counter((r["kind"], r.get("reason")) for r in rows) == {
        ("record", None): 2, ("drop", "warc_warcinfo_record"): 1, ("drop", "empty_text"): 1}
    en = next(r for r in rows if r.get("domain") == "linuxnotes.example.org" and r["kind"] == "record")
    assert en["text"] == texts[module.EN_DOCS[0]].strip()


def test_a_warc_cut_short_keeps_the_records_before_the_cut(tmp_path):
    data = WARC.read_bytes()
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    rows = list(iter_records(str(cut), READ_CFG, "crawl"))
    assert rows[-1]["kind"] == "quarantine" and rows[-1]["error"].startswith("truncated archive")
    assert 10 < len(rows) < 25 and all(r["kind"] != "quarantine" for r in rows[:-1])


def test_an_uncompressed_warc_with_another_name_is_still_read_as_warc(tmp_path):
    plain = tmp_path / "crawl-part-0001"
    plain.write_bytes(gzip.decompress(WARC.read_bytes()))
    rows = list(iter_records(str(plain), READ_CFG, "crawl"))
    assert len(rows) == 25 and sum(r["kind"] == "record" for r in rows) == 12


def test_a_content_encoded_body_is_decoded_before_extraction(tmp_path):
    import io

    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    html = ("<html lang=en><body><article><h1>Encoded</h1><p>" + "A paragraph of a page sent gzip-encoded. " * 10
            + "</p></article></body></html>").encode()
    path = tmp_path / "encoded.warc.gz"
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        headers = [("Content-Type", "text/html; charset=utf-8"), ("Content-Encoding", "gzip")]
        writer.write_record(writer.create_warc_record("https://a.example/", "response",
                                                      payload=io.BytesIO(gzip.compress(html)),
                                                      http_headers=StatusAndHeaders("200 OK", headers,
                                                                                    protocol="HTTP/1.1")))
    (row,) = iter_records(str(path), READ_CFG, "crawl")
    assert row["kind"] == "record" and "A paragraph of a page sent gzip-encoded." in row["text"]
