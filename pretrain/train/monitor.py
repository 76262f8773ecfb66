"""What a run reports: metrics.jsonl, W&B, a progress bar, summary.json and loss.png.

Only global rank 0 constructs a :class:`RunMonitor`; every number it receives
has already been reduced across ranks by the trainer.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

METRICS = "metrics.jsonl"
SPIKES = "spikes.jsonl"  # written by pretrain/train/callbacks/spike_log.py
SUMMARY = "summary.json"
# Event rows that record what happened to the run, not a trained step: a resume keeps them
# even when their step is past the checkpoint (a hang at step 7 stays in the history after the
# restart from step 4 retrains 5..7).
HISTORY_EVENTS = frozenset({"hang"})
LOSS_PLOT = "loss.png"


def memory_gb() -> float:
    """Peak accelerator memory on GPU; peak resident memory of this process on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 1024**3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def append_jsonl(path: str | Path, row: dict[str, Any]) -> None:
    """Append ``row`` as one whole line: one ``write`` of the encoded line (O_APPEND), so a crash
    or a full disk can at worst leave the *last* line torn, which :func:`repair_jsonl` drops."""
    data = (json.dumps(row) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        while data:  # a short write (signal, full disk) continues the same line
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


def _parse_jsonl(raw: bytes) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """(rows, [(line number, text) of lines that are not a JSON object])."""
    rows, bad = [], []
    for number, line in enumerate(raw.decode("utf-8", errors="replace").split("\n"), 1):
        if not line.strip():
            continue
        row = _loads(line)
        if row is not None:
            rows.append(row)
            continue
        # A torn row with a whole row appended onto it (a writer that did not mend the file
        # first): keep the whole row at the end, drop the torn start.
        starts = [i for i in range(1, len(line)) if line[i] == "{"]
        tail = next(((i, r) for i in starts if (r := _loads(line[i:])) is not None), None)
        if tail is None:
            bad.append((number, line))
        else:
            bad.append((number, line[:tail[0]]))
            rows.append(tail[1])
    return rows, bad


def _loads(line: str) -> dict[str, Any] | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) else None


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl; a torn line (a crash mid-write) is skipped with a warning."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    rows, bad = _parse_jsonl(path.read_bytes())
    for number, _ in bad:
        print(f"warning: {path}:{number} is not a complete JSON row (torn write?); skipped", file=sys.stderr)
    return rows


def repair_jsonl(path: str | Path, last_step: int | None = None) -> list[dict[str, Any]]:
    """Rewrite a JSONL log without its torn lines (and, given ``last_step``, without rows of later
    steps: a resumed run trains them again); atomic (temp file + rename). Returns one report
    per dropped torn line: ``{"file", "line", "text"}`` (text cut to 200 characters)."""
    path = Path(path)
    if not path.is_file():
        return []
    raw = path.read_bytes()
    rows, bad = _parse_jsonl(raw)
    kept = rows if last_step is None else [r for r in rows if (r.get("step") or 0) <= last_step
                                           or r.get("event") in HISTORY_EVENTS]
    # a complete row cut just before its newline would have the next row appended onto it
    if not bad and len(kept) == len(rows) and (not raw or raw.endswith(b"\n")):
        return []
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write("".join(json.dumps(row) + "\n" for row in kept))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return [{"file": str(path), "line": number, "text": text[:200]} for number, text in bad]


def truncate_metrics(run_dir: str | Path, last_step: int) -> list[dict[str, Any]]:
    """On resume, forget steps after the checkpoint (they will be trained again) and torn lines."""
    return repair_jsonl(Path(run_dir) / METRICS, last_step)


def set_aside(path: str | Path) -> Path | None:
    """A fresh start (nothing loaded) in a run dir with an old log: rename the log to
    ``<name>.prev-<UTC time>`` so every step of the new run appears once. Returns the new name."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.prev-{stamp}")
    n = 1
    while target.exists():
        target, n = path.with_name(f"{path.name}.prev-{stamp}.{n}"), n + 1
    os.replace(path, target)
    return target


def wandb_mode(cfg: DictConfig) -> str:
    """WANDB_MODE wins; 'online' without credentials falls back to offline."""
    if os.environ.get("WANDB_MODE") == "":  # set but empty: wandb itself would reject it
        del os.environ["WANDB_MODE"]
    mode = os.environ.get("WANDB_MODE") or cfg.logging.wandb.mode
    if mode == "online" and not (os.environ.get("WANDB_API_KEY") or Path.home().joinpath(".netrc").is_file()):
        print("W&B: online requested but no WANDB_API_KEY/.netrc; logging offline", file=sys.stderr)
        mode = "offline"
    return mode


class RunMonitor:
    def __init__(self, cfg: DictConfig, resolved: DictConfig, start_step: int, total_steps: int,
                 layout: dict[str, Any] | None = None) -> None:
        self.run_dir = Path(cfg.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(resolved, self.run_dir / "config.yaml", resolve=True)
        # A crash (or a full disk) may have torn the last line of a log; a resume drops the rows
        # after its checkpoint; a fresh start (step 0: nothing loaded, or an untrained iter 0)
        # sets the old run's rows aside. Each repair is printed and logged as an event row below.
        notes: list[tuple[str, dict[str, Any]]] = []
        if start_step > 0:
            repairs = truncate_metrics(self.run_dir, start_step)
        else:
            repairs = []
            moved = set_aside(self.run_dir / METRICS)
            if moved is not None:
                notes.append(("log_set_aside", {"file": str(self.run_dir / METRICS), "moved_to": str(moved)}))
        # spikes.jsonl is an event log (train.spikes.replay_skips reads its skipped ranges):
        # only torn lines are dropped, nothing is truncated or set aside.
        repairs += repair_jsonl(self.run_dir / SPIKES)
        notes += [("log_repaired", repair) for repair in repairs]
        self._path = self.run_dir / METRICS
        self.log_interval = cfg.train.log_interval
        self.start_step = start_step
        self.wall_start = time.time()
        self._wandb = None
        mode = wandb_mode(cfg)
        if mode != "disabled":
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            id_file = self.run_dir / "wandb_id"
            run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]
            id_file.write_text(run_id)
            self._wandb = wandb.init(dir=str(self.run_dir), mode=mode, project=cfg.logging.wandb.project,
                                     name=cfg.logging.wandb.name, id=run_id, resume="allow",
                                     config=OmegaConf.to_container(resolved, resolve=True))
        self._bar = None
        if cfg.logging.progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                             desc="pretrain", file=sys.stderr, mininterval=1.0,
                             disable=None)  # None: a bar on terminals, plain log lines in files
        # layout: pretrain.train.optim.describe_optimizer (dtypes, optimizer shards), on the start row
        self.event("resume" if start_step > 0 else "start", start_step, **(layout or {}))
        for name, fields in notes:
            if name == "log_repaired":
                self._warn(f"{fields['file']}:{fields['line']} was a torn line (a crash mid-write?); dropped: "
                           f"{fields['text']!r}")
            else:
                self._warn(f"fresh start (no checkpoint loaded): the old {fields['file']} was moved to "
                           f"{fields['moved_to']} so every step appears once")
            self.event(name, start_step, **fields)
        if layout and "precision" in layout:  # backend=deepspeed describes no layout, only lr_groups
            self._print(format_layout(layout))

    @property
    def wandb(self):
        """The W&B run, or None when W&B is disabled."""
        return self._wandb

    def event(self, name: str, step: int, **fields: Any) -> None:
        """Non-step rows (start, resume, checkpoint, eval) share the file; ``event`` tells them apart."""
        append_jsonl(self._path, {"event": name, "step": step, "time": time.time(), **fields})

    def log_step(self, row: dict[str, Any]) -> None:
        append_jsonl(self._path, row)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if v is not None and k != "step"}, step=row["step"])
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}", refresh=False)
            self._bar.update(1)
        if self.log_interval and row["step"] % self.log_interval == 0:
            line = (f"step {row['step']:>6} | loss {row['loss']:.4f} | grad_norm {row['grad_norm']:.3f} | "
                    f"lr {row['lr']:.3e} | {row['tokens_per_s']:.0f} tok/s | "
                    f"{row['tflops_per_gpu']:.3f} TFLOP/s/gpu | mem {row['mem_gb']:.2f} GB")
            self._print(line)

    def log_eval(self, step: int, loss: float) -> None:
        self.event("eval", step, eval_loss=loss)
        if self._wandb is not None:
            self._wandb.log({"eval_loss": loss}, step=step)
        self._print(f"step {step:>6} | held-out loss {loss:.4f}")

    def log_heldout(self, step: int, results: dict[str, dict[str, dict]]) -> None:
        """Per-language and per-source held-out loss/perplexity/BPB (pretrain.eval.heldout)."""
        from pretrain.eval.heldout import format_table

        self.event("heldout", step, **results)
        if self._wandb is not None:
            flat = {f"heldout/{metric}/{kind[3:]}/{name}": row[metric]
                    for kind, rows in results.items() for name, row in rows.items()
                    for metric in ("loss", "bpb") if row.get(metric) is not None}
            self._wandb.log(flat, step=step)
        self._print(f"step {step:>6} | held-out evaluation\n{format_table(results)}")

    def _warn(self, line: str) -> None:
        print(f"warning: {line}", file=sys.stderr, flush=True)

    def _print(self, line: str) -> None:
        if self._bar is not None and not self._bar.disable:
            self._bar.write(line, file=sys.stderr)
        else:
            print(line, flush=True)

    def finish(self, checkpoints: list[str], backend: str = "megatron") -> dict[str, Any]:
        if self._bar is not None:
            self._bar.close()
        rows = read_metrics(self.run_dir)
        steps = [r for r in rows if "loss" in r and r.get("event") is None]
        evals = [r for r in rows if r.get("event") == "eval"]
        heldout = [r for r in rows if r.get("event") == "heldout"]
        resumes = [r["step"] for r in rows if r.get("event") == "resume"]
        summary = {
            "run_dir": str(self.run_dir.resolve()),
            "steps": steps[-1]["step"] if steps else 0,
            "first_loss": steps[0]["loss"] if steps else None,
            "last_loss": steps[-1]["loss"] if steps else None,
            "last_eval_loss": evals[-1]["eval_loss"] if evals else None,
            "heldout": ({k: heldout[-1][k] for k in ("step", "by_lang", "by_source") if k in heldout[-1]}
                        if heldout else None),
            "tokens": steps[-1]["tokens"] if steps else 0,
            "consumed_samples": steps[-1]["consumed_samples"] if steps else 0,
            "wall_time_s": round(time.time() - self.wall_start, 2),
            "this_run_steps": len([r for r in steps if r["step"] > self.start_step]),
            "resumed_at": resumes,
            "checkpoints": checkpoints,
            "backend": backend,
        }
        (self.run_dir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
        plot_loss(steps, evals, resumes, self.run_dir / LOSS_PLOT)
        if self._wandb is not None:
            self._wandb.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float))})
            self._wandb.finish()
        return summary


def format_layout(layout: dict[str, Any]) -> str:
    """The start-up line: ``precision: params bfloat16, grads accumulated in float32, optimizer
    main params float32 | optimizer state sharded over DP=2: 28800+28800 of 57600 params ...``."""
    p, o = layout["precision"], layout["optimizer_shards"]
    shards = o["main_params_per_dp_rank"]
    how = (f"sharded over DP={o['data_parallel_size']}: {'+'.join(map(str, shards))} of {o['model_params']} params"
           if o["distributed"] else f"replicated on DP={o['data_parallel_size']}: {shards[0]} of "
                                    f"{o['model_params']} params")
    return (f"precision: params {p['params']}, grads accumulated in {p['main_grads']}, "
            f"optimizer main params {p['main_params']} | optimizer state {how} (rank 0's TP/PP slice)")


def plot_loss(steps: list[dict], evals: list[dict], resumes: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=1, label="train loss")
    if evals:
        ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="held-out loss")
    for i, step in enumerate(resumes):
        ax.axvline(step, color="grey", ls="--", lw=1, label="resumed" if i == 0 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
