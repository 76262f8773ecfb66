"""report.json, report.md, quarantine.jsonl and mixture.json from the merged tallies.

The report is the audit trail of a run: where each input record went. Its
invariant ``input = kept + heldout + sum(dropped) + quarantined`` is asserted
before anything is written, so a run that lost a document fails loudly
instead of producing a plausible-looking dataset.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from data_pipeline.read_errors import is_file_problem


class InvariantError(AssertionError):
    """Some input records are neither in the output nor counted as dropped or quarantined."""


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def check_invariant(tally: dict) -> None:
    dropped = sum(e["count"] for e in tally["dropped"].values())
    accounted = tally["kept"] + tally["heldout"] + dropped + tally["quarantined"]
    if tally["input"] != accounted:
        raise InvariantError(f"input {tally['input']} != kept {tally['kept']} + heldout {tally['heldout']} + "
                             f"dropped {dropped} + quarantined {tally['quarantined']}")


def mixture(kept_by: dict, weights: dict) -> dict:
    """Per-source sampling weights (configured, default 1.0) normalised over the sources present."""
    raw = {source: float(weights.get(source, 1.0)) for source in sorted(kept_by)}
    total = sum(raw.values())
    return {"sources": {source: {"weight": (raw[source] / total) if total > 0 else 0.0,
                                 "configured_weight": raw[source],
                                 "documents": kept_by[source]["documents"],
                                 "bytes": kept_by[source]["bytes"],
                                 "langs": dict(sorted(kept_by[source]["langs"].items()))}
                        for source in sorted(kept_by)}}


def build_report(tally: dict, run_info: dict) -> dict:
    check_invariant(tally)
    by_stage: dict[str, dict] = {}
    for key, entry in sorted(tally["dropped"].items()):
        stage, reason = key.split("/", 1)
        by_stage.setdefault(stage, {})[reason] = entry
    langs: dict[str, dict] = {}
    for source, entry in tally["kept_by"].items():
        for lang, n in entry["langs"].items():
            langs.setdefault(lang, {"documents": 0})["documents"] += n
    return {
        "input": tally["input"], "kept": tally["kept"], "heldout": tally["heldout"],
        "dropped_total": sum(e["count"] for e in tally["dropped"].values()),
        "quarantined": tally["quarantined"],
        "invariant": "input = kept + heldout + dropped_total + quarantined",
        "dropped": by_stage,
        "kept_by_source": {s: {"documents": e["documents"], "bytes": e["bytes"], "langs": dict(sorted(e["langs"].items()))}
                           for s, e in sorted(tally["kept_by"].items())},
        "kept_by_lang": dict(sorted(langs.items())),
        "kept_by_script": dict(sorted(tally.get("kept_by_script", {}).items())),  # Chinese: hans / hant
        "heldout_by_source": {s: {"documents": e["documents"], "bytes": e["bytes"], "langs": dict(sorted(e["langs"].items()))}
                              for s, e in sorted(tally["heldout_by"].items())},
        "pii_replacements": dict(sorted(tally["pii"].items())),
        "decontamination": decontamination(by_stage.get("decontaminate", {}), tally.get("decontaminated", {})),
        # quarantined records by where they failed: "read" (the reader) or the stage that raised on them
        "quarantined_by_stage": _count_by_stage(tally["quarantine"]),
        # files read only in part or not at all (each also counted once or more in ``quarantined``)
        "file_problems": sorted(({"file": q["file"], "line": q["line"], "error": q["error"]}
                                 for q in tally["quarantine"] if is_file_problem(q["error"])),
                                key=lambda q: (q["file"], q["line"] or 0)),
        **run_info,
    }


def decontamination(dropped: dict, cut: dict) -> dict:
    """Per benchmark: documents dropped (``contaminated:<name>``), documents kept with spans cut, spans cut."""
    out: dict[str, dict] = {}
    for reason, entry in dropped.items():
        name = reason.split(":", 1)[1] if reason.startswith("contaminated:") else reason
        out.setdefault(name, {"dropped": 0, "cut": 0, "spans_cut": 0})["dropped"] += entry["count"]
    for name, entry in cut.items():
        into = out.setdefault(name, {"dropped": 0, "cut": 0, "spans_cut": 0})
        into["cut"] += entry["documents"]
        into["spans_cut"] += entry["spans"]
    return dict(sorted(out.items()))


def _count_by_stage(quarantine: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for q in quarantine:
        stage = q.get("stage") or "read"
        counts[stage] = counts.get(stage, 0) + 1
    return dict(sorted(counts.items()))


def report_markdown(report: dict) -> str:
    lines = ["# Data pipeline report", "",
             f"- input records: **{report['input']}**",
             f"- kept (training shards): **{report['kept']}**",
             f"- held out: **{report['heldout']}**",
             f"- dropped: **{report['dropped_total']}**",
             f"- quarantined (malformed input, or a stage raised on it): **{report['quarantined']}**"
             + (" (" + ", ".join(f"{k}: {v}" for k, v in report.get("quarantined_by_stage", {}).items()) + ")"
                if report.get("quarantined_by_stage") else ""),
             f"- check: {report['input']} = {report['kept']} + {report['heldout']} + {report['dropped_total']} + "
             f"{report['quarantined']}", ""]
    ids = report.get("input_ids")
    if ids and ids["repeated"]:
        lines += [f"- input ids repeated: **{ids['repeated']}** ids on {ids['records']} records (e.g. "
                  + ", ".join(f"`{_md_escape(str(i))}`" for i in ids["examples"])
                  + "); documents are told apart by `doc_id`, so dedup is not affected", ""]
    lines += ["## Dropped, by stage and reason", "", "| stage | reason | documents | examples |", "|---|---|---:|---|"]
    for stage, reasons in report["dropped"].items():
        for reason, entry in reasons.items():
            examples = "<br>".join(f"`{e['id']}`: {_md_escape(e['text'][:80])}" for e in entry["examples"])
            lines.append(f"| {stage} | {reason} | {entry['count']} | {examples} |")
    if report.get("file_problems"):
        lines += ["", "## Files read in part or not at all", "", "| file | from line | problem |", "|---|---:|---|"]
        lines += [f"| {_md_escape(p['file'])} | {p['line']} | {_md_escape(p['error'])} |"
                  for p in report["file_problems"]]
    if report.get("skipped_files"):
        lines += ["", "## Files in input directories not read", "", "| file | reason |", "|---|---|"]
        lines += [f"| {_md_escape(p['path'])} | {_md_escape(p['reason'])} |" for p in report["skipped_files"]]
    lines += ["", "## Kept, by source", "", "| source | documents | bytes | languages |", "|---|---:|---:|---|"]
    for source, entry in report["kept_by_source"].items():
        langs = ", ".join(f"{k}: {v}" for k, v in entry["langs"].items())
        lines.append(f"| {source} | {entry['documents']} | {entry['bytes']} | {langs} |")
    lines += ["", "## Kept, by language", "", "| language | documents |", "|---|---:|"]
    lines += [f"| {lang} | {entry['documents']} |" for lang, entry in report["kept_by_lang"].items()]
    if report.get("kept_by_script"):
        lines += ["", "## Kept Chinese, by script", "", "| script | documents |", "|---|---:|"]
        lines += [f"| {script} | {n} |" for script, n in report["kept_by_script"].items()]
    if report.get("decontamination"):
        lines += ["", "## Benchmark decontamination", "", "| benchmark | dropped | kept with spans cut | spans cut |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {name} | {e['dropped']} | {e['cut']} | {e['spans_cut']} |"
                  for name, e in report["decontamination"].items()]
    lines += ["", "## PII replacements (documents kept)", "", "| kind | replacements |", "|---|---:|"]
    lines += [f"| {kind} | {n} |" for kind, n in report["pii_replacements"].items()]
    lines += ["", "## Run", "", "```json", json.dumps({k: report[k] for k in ("files", "stage1", "dedup", "seconds")
                                                         if k in report}, indent=2), "```", ""]
    return "\n".join(lines)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ⏎ ").replace("`", "'")


def write_outputs(out: Path, report: dict, tally: dict, weights: dict) -> dict:
    """Write quarantine.jsonl, mixture.json, report.md and (last) report.json; return the mixture."""
    quarantine = sorted(tally["quarantine"], key=lambda q: (q["file"], q["line"] or 0))
    _write_text_atomic(out / "quarantine.jsonl",
                       "".join(json.dumps(q, ensure_ascii=False) + "\n" for q in quarantine))
    mix = mixture(tally["kept_by"], weights)
    _write_text_atomic(out / "mixture.json", json.dumps(mix, indent=2, ensure_ascii=False) + "\n")
    _write_text_atomic(out / "report.md", report_markdown(report))
    _write_text_atomic(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return mix


def summary_line(report: dict) -> str:
    return (f"input {report['input']} | kept {report['kept']} | heldout {report['heldout']} | "
            f"dropped {report['dropped_total']} | quarantined {report['quarantined']}")


def any_to_plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj))
