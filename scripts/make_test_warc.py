"""Write the small Common Crawl-like WARC (and its WET) the data pipeline tests and bench read.

    python scripts/make_test_warc.py   # -> tests/data_pipeline/data/crawl/{sample.warc.gz, sample.warc.wet.gz}

Pages are built from paragraphs of the Debian Reference (GPL-2+, already in
data/corpus) wrapped in the navigation, sidebars, cookie banners and footers
real sites have, so extraction has boilerplate to remove. The set covers what
the readers must handle: UTF-8 pages declared in the HTTP header, in a meta tag
or not at all; GBK and Big5 pages declared in the header, only in a meta
``http-equiv`` tag, and undeclared; Traditional-script mirrors of Simplified
pages; pages on blocklisted domains and subdomains; a 404, a redirect, a PDF,
a record cut short (``WARC-Truncated``), request and metadata records and the
leading ``warcinfo``. Record ids and dates are derived from the URL, so the
output is byte-identical on every run.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sys
import uuid
from pathlib import Path

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data_pipeline" / "data" / "crawl"
DATE = "2024-03-01T12:00:00Z"

EN_DOCS = ["en_docs-00062", "en_docs-00088", "en_docs-00312", "en_docs-00432"]
ZH_DOCS = ["zh_docs-00011", "zh_docs-00014", "zh_docs-00021", "zh_docs-00029", "zh_docs-00041", "zh_docs-00052"]

EN_NAV = """<header class="site-header"><div class="logo"><a href="/">LinuxNotes</a></div>
<nav class="menu"><ul><li><a href="/">Home</a></li><li><a href="/tutorials/">Tutorials</a></li>
<li><a href="/forum/">Forum</a></li><li><a href="/about/">About us</a></li><li><a href="/contact/">Contact</a></li>
<li><a href="/login/">Sign in</a></li></ul></nav>
<div class="breadcrumb"><a href="/">Home</a> &raquo; <a href="/tutorials/">Tutorials</a> &raquo; Debian</div></header>"""
EN_SIDE = """<aside class="sidebar"><h3>Popular posts</h3><ul><li><a href="/p/1">Top 10 terminal tricks you never knew</a></li>
<li><a href="/p/2">Why I switched back to Vim</a></li><li><a href="/p/3">Subscribe to our weekly newsletter</a></li></ul>
<div class="ad">Advertisement: Cheap VPS hosting from $2.99/month - click here!</div></aside>"""
EN_FOOT = """<div id="cookie-banner">We use cookies to improve your experience. By continuing you accept our cookie policy. <button>Accept all cookies</button></div>
<footer><p>Copyright &copy; 2024 LinuxNotes Media Ltd. All rights reserved.</p>
<p><a href="/privacy/">Privacy Policy</a> | <a href="/terms/">Terms of Service</a> | <a href="/sitemap/">Sitemap</a></p>
<p>Follow us on Twitter, Facebook and YouTube</p></footer>"""
# Chinese CMS templates (DedeCMS, Discuz) lay pages out in plain <div>s, without <nav>/<aside>/<footer>.
ZH_NAV = """<div class="header"><div class="logo"><a href="/">开源技术网</a></div>
<div class="nav"><a href="/">首页</a> <a href="/news/">新闻资讯</a> <a href="/bbs/">技术论坛</a>
<a href="/about/">关于我们</a> <a href="/contact/">联系我们</a> <a href="/reg/">注册登录</a></div>
<div class="crumb">当前位置：<a href="/">首页</a> &gt; <a href="/linux/">Linux教程</a> &gt; 正文</div></div>"""
ZH_SIDE = """<div class="right"><div class="title">热门文章</div><ul><li><a href="/a/1">十个你不知道的终端技巧</a></li>
<li><a href="/a/2">扫码关注微信公众号领取资料</a></li><li><a href="/a/3">免费下载电子书大礼包</a></li></ul>
<div class="ad">广告：云服务器特惠，每月仅需九块九！</div></div>"""
ZH_FOOT = """<div class="footer"><p>版权所有 &copy; 2024 开源技术网 保留所有权利</p><p>京ICP备12345678号-1 | 京公网安备11010802012345号</p>
<p><a href="/about/">关于我们</a> | <a href="/ads/">广告服务</a> | <a href="/map/">网站地图</a> | <a href="/jobs/">诚聘英才</a></p></div>"""

# Strings that only the boilerplate above contains: the tests check none reaches the extracted text.
BOILERPLATE = ["Top 10 terminal tricks", "Accept all cookies", "All rights reserved", "Cheap VPS hosting",
               "Subscribe to our weekly newsletter", "Privacy Policy", "京ICP备", "扫码关注微信公众号", "版权所有",
               "云服务器特惠", "网站地图", "十个你不知道的终端技巧"]


def load_texts() -> dict[str, str]:
    texts = {}
    for name in ("en_docs", "zh_docs"):
        with gzip.open(ROOT / "data" / "corpus" / f"{name}.jsonl.gz", "rt", encoding="utf-8") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if rec.get("id") in EN_DOCS + ZH_DOCS:
                    texts[rec["id"]] = rec["text"]
    return texts


def page(title: str, text: str, lang: str, meta: str = "") -> str:
    """A page: head (optional charset meta tag), navigation, the article, sidebar, footer."""
    paras = "\n".join(f"<p>{line}</p>" for line in text.split("\n") if line.strip())
    if lang.startswith("zh"):
        nav, side, foot = ZH_NAV, ZH_SIDE, ZH_FOOT
        body = f'<div class="main"><div class="content"><h1>{title}</h1>\n{paras}\n</div></div>'
    else:
        nav, side, foot = EN_NAV, EN_SIDE, EN_FOOT
        body = f"<main><article><h1>{title}</h1>\n{paras}\n</article></main>"
    return (f"<!DOCTYPE html>\n<html lang=\"{lang}\"><head>{meta}<title>{title}</title>"
            "<script>window.dataLayer=[];function gtag(){dataLayer.push(arguments)}</script>"
            "<style>body{font-family:sans-serif}</style></head>\n<body>\n"
            f"{nav}\n{body}\n{side}\n{foot}\n</body></html>")


def traditional(text: str, config: str = "s2t") -> str:
    """Character-level Simplified -> Traditional (``s2t``), as mirror sites convert; ``s2twp`` adds Taiwan phrasing."""
    import opencc

    return opencc.OpenCC(config).convert(text)


def encode(html: str, codec: str) -> bytes:
    """A page in a legacy charset: characters it lacks become numeric references, as CMSs write them."""
    return html.encode(codec, "xmlcharrefreplace")


def specs(texts: dict[str, str]) -> list[dict]:
    """One dict per HTTP exchange: url, status, content type, body bytes, and what the tests expect of it."""
    en = [texts[i] for i in EN_DOCS]
    zh = [texts[i] for i in ZH_DOCS]
    tw = traditional(zh[3])
    out = [
        {"url": "https://www.linuxnotes.example.org/tutorials/apt-basics", "ctype": "text/html; charset=utf-8",
         "body": page("APT basics", en[0], "en").encode("utf-8"), "expect": "kept en"},
        {"url": "https://linuxnotes.example.org/tutorials/shell", "ctype": "text/html",
         "body": page("Shell", en[1], "en", '<meta charset="utf-8">').encode("utf-8"), "expect": "kept en"},
        {"url": "http://docs.example.net/debian/packages", "ctype": "text/html",
         "body": page("Packages", en[2], "en").encode("utf-8"), "expect": "kept en (undeclared utf-8)"},
        {"url": "http://www.kaiyuan.example.cn/linux/1.html", "ctype": "text/html; charset=GBK",
         "body": encode(page("Debian 简介", zh[0], "zh-CN"), "gbk"), "expect": "kept zh gbk (header)"},
        {"url": "http://www.kaiyuan.example.cn/linux/2.html", "ctype": "text/html",
         "body": encode(page("软件包管理", zh[1], "zh-CN",
                             '<meta http-equiv="Content-Type" content="text/html; charset=gb2312">'), "gbk"),
         "expect": "kept zh gbk (meta, declared gb2312)"},
        {"url": "http://bbs.kaiyuan.example.cn/thread-3.html", "ctype": "text/html",
         "body": encode(page("系统管理", zh[2], "zh-CN"), "gb18030"), "expect": "kept zh gb18030 (undeclared)"},
        {"url": "https://www.jiaocheng.example.tw/debian/4.html", "ctype": "text/html; charset=big5",
         "body": encode(page(traditional("系统设置"), tw, "zh-TW"), "big5"), "expect": "kept zh big5 (header) hant"},
        {"url": "https://wiki.example.hk/debian/5.html", "ctype": "text/html",
         "body": encode(page(traditional("网络配置", "s2twp"), traditional(zh[4], "s2twp"), "zh-HK"), "big5"),
         "expect": "kept zh big5 (undeclared) hant"},
        # The Simplified original of the big5 page above: one of the pair is removed as a duplicate.
        {"url": "https://www.kaiyuan.example.cn/linux/4.html", "ctype": "text/html; charset=utf-8",
         "body": page("系统设置", zh[3], "zh-CN").encode("utf-8"), "expect": "duplicate of the big5 mirror"},
        # A Traditional mirror of page 1 (GBK) served as UTF-8 on another site: removed as a duplicate.
        {"url": "https://mirror.example.tw/kaiyuan/1.html", "ctype": "text/html; charset=utf-8",
         "body": page(traditional("Debian 简介"), traditional(zh[0]), "zh-TW").encode("utf-8"),
         "expect": "duplicate (Traditional mirror)"},
        {"url": "https://casino.blocked.example.com/win-big", "ctype": "text/html; charset=utf-8",
         "body": page("Guide", en[3], "en").encode("utf-8"), "expect": "blocked (subdomain of a listed domain)"},
        {"url": "http://www.badsite.example.net/zh/6.html", "ctype": "text/html; charset=utf-8",
         "body": page("博彩", zh[5], "zh-CN").encode("utf-8"), "expect": "blocked (listed domain)"},
        {"url": "https://linuxnotes.example.org/missing", "ctype": "text/html; charset=utf-8", "status": "404 Not Found",
         "body": b"<html><body><h1>404 Not Found</h1><p>The page you requested does not exist.</p></body></html>",
         "expect": "dropped http_404"},
        {"url": "http://linuxnotes.example.org/old", "ctype": "text/html", "status": "301 Moved Permanently",
         "extra": [("Location", "https://linuxnotes.example.org/tutorials/shell")], "body": b"",
         "expect": "dropped http_301"},
        {"url": "https://linuxnotes.example.org/manual.pdf", "ctype": "application/pdf",
         "body": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n",
         "expect": "dropped not_html"},
        {"url": "https://docs.example.net/debian/truncated", "ctype": "text/html; charset=utf-8", "truncated": True,
         "body": page("Cut", en[2][:400], "en").encode("utf-8")[:900], "expect": "dropped truncated"},
    ]
    return out


def record_id(*parts: str) -> str:
    return f"<urn:uuid:{uuid.UUID(hashlib.md5(''.join(parts).encode()).hexdigest())}>"


def write_warc(path: Path, pages: list[dict]) -> None:
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        info = writer.create_warcinfo_record(path.name, {"software": "scripts/make_test_warc.py",
                                                         "format": "WARC File Format 1.1", "isPartOf": "TEST-CRAWL"})
        info.rec_headers.replace_header("WARC-Record-ID", record_id("warcinfo"))
        info.rec_headers.replace_header("WARC-Date", DATE)
        writer.write_record(info)
        for i, spec in enumerate(pages):
            url = spec["url"]
            if i % 4 == 0:  # Common Crawl writes request, response, metadata per fetch; include a few of each
                req = StatusAndHeaders("GET / HTTP/1.1", [("Host", url.split("/")[2]), ("User-Agent", "TestBot/1.0")],
                                       is_http_request=True)
                rec = writer.create_warc_record(url, "request", payload=io.BytesIO(b""), http_headers=req,
                                                warc_headers_dict={"WARC-Record-ID": record_id("req", url),
                                                                   "WARC-Date": DATE})
                writer.write_record(rec)
            headers = [("Content-Type", spec["ctype"]), *spec.get("extra", [])]
            http = StatusAndHeaders(spec.get("status", "200 OK"), headers, protocol="HTTP/1.1")
            warc_headers = {"WARC-Record-ID": record_id("resp", url), "WARC-Date": DATE,
                            # Common Crawl's own sniffed type (readers trust it over the server's header)
                            "WARC-Identified-Payload-Type": spec["ctype"].split(";")[0]}
            if spec.get("truncated"):
                warc_headers["WARC-Truncated"] = "length"
            rec = writer.create_warc_record(url, "response", payload=io.BytesIO(spec["body"]), http_headers=http,
                                            warc_headers_dict=warc_headers)
            writer.write_record(rec)
            if i % 4 == 1:
                meta = writer.create_warc_record(url, "metadata", payload=io.BytesIO(b"fetchTimeMs: 120\r\n"),
                                                 warc_content_type="application/warc-fields",
                                                 warc_headers_dict={"WARC-Record-ID": record_id("meta", url),
                                                                    "WARC-Date": DATE})
                writer.write_record(meta)


def write_wet(path: Path, texts: dict[str, str]) -> None:
    """A WET of three conversion records (the text Common Crawl extracted), one of them empty."""
    docs = [("https://linuxnotes.example.org/wet/1", texts[EN_DOCS[0]]),
            ("https://www.kaiyuan.example.cn/wet/2", texts[ZH_DOCS[1]]),
            ("https://linuxnotes.example.org/wet/empty", "")]
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        info = writer.create_warcinfo_record(path.name, {"software": "scripts/make_test_warc.py"})
        info.rec_headers.replace_header("WARC-Record-ID", record_id("wetinfo"))
        info.rec_headers.replace_header("WARC-Date", DATE)
        writer.write_record(info)
        for url, text in docs:
            rec = writer.create_warc_record(url, "conversion", payload=io.BytesIO(text.encode("utf-8")),
                                            warc_content_type="text/plain",
                                            warc_headers_dict={"WARC-Record-ID": record_id("wet", url),
                                                               "WARC-Date": DATE})
            writer.write_record(rec)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    texts = load_texts()
    missing = [i for i in EN_DOCS + ZH_DOCS if i not in texts]
    if missing:
        sys.exit(f"documents not in data/corpus: {missing}")
    pages = specs(texts)
    write_warc(OUT / "sample.warc.gz", pages)
    write_wet(OUT / "sample.warc.wet.gz", texts)
    (OUT / "blocklist" / "gambling").mkdir(parents=True, exist_ok=True)
    (OUT / "blocklist" / "gambling" / "domains").write_text("blocked.example.com\nbadsite.example.net\n")
    (OUT / "blocklist" / "gambling" / "urls").write_text("linuxnotes.example.org/tutorials\n")  # not read: urls lists
    (OUT / "expected.json").write_text(json.dumps({p["url"]: p["expect"] for p in pages}, indent=1,
                                                  ensure_ascii=False) + "\n")
    for name in ("sample.warc.gz", "sample.warc.wet.gz"):
        print(f"{OUT / name}: {(OUT / name).stat().st_size} bytes")


if __name__ == "__main__":
    main()
