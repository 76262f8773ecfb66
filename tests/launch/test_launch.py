"""The launcher without Slurm: sbatch generation for the A800/H100 presets, config errors, a local run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from launch.cli_args import split_argv
from launch.node_entry import should_requeue
from pretrain.preemption import PREEMPTED_EXIT_CODE, install_preemption_handler

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"


def run_launch(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def sbatch_of(result: subprocess.CompletedProcess, launch_dir: Path) -> str:
    assert result.returncode == 0, result.stderr
    script = (launch_dir / "slurm" / "job.sbatch").read_text()
    assert script in result.stdout  # the dry run prints exactly what it wrote
    return script


def readme_launch_command() -> list[str]:
    """The 52B launch example of README.md, as its words: the test runs what users copy."""
    block = re.search(r"```bash\n(python -m launch stage=pretrain cluster=a800 .*?)```", README.read_text(), re.S)
    assert block, "README.md lost its 52B launch example"
    words = " ".join(line.split("#")[0].rstrip(" \\") for line in block.group(1).splitlines()).split()
    assert words[:3] == ["python", "-m", "launch"]
    return words[3:]


def test_a800_dry_run_of_the_readme_example_writes_a_per_node_torchrun_sbatch_and_submits_nothing(tmp_path):
    args = [a if not a.startswith("run_dir=") else f"run_dir={tmp_path}/run" for a in readme_launch_command()]
    assert "+experiment=teleflm_52b" in args and "dry_run=true" in args
    result = run_launch(*args, "cluster.slurm.qos=high", "cluster.slurm.constraint=a800")
    script = sbatch_of(result, tmp_path / "run" / "launch")
    assert "# launch config" in result.stdout and "# pretrain config" in result.stdout
    assert "num_layers: 64" in result.stdout  # the stage's resolved config, 52B model
    assert "[launch] preflight: pretrain: config valid for 896 ranks (BF16 on GPUs)" in result.stdout
    directives = re.findall(r"^#SBATCH (.*)$", script, re.M)
    for expected in ("--nodes=112", "--ntasks-per-node=1", "--gpus-per-node=8", "--cpus-per-task=96",
                     "--mem=1000G", "--time=4320", "--partition=train", "--account=llm", "--qos=high",
                     "--constraint=a800", "--exclusive", "--signal=USR1@300", "--requeue", "--open-mode=append"):
        assert expected in directives, (expected, directives)
    assert "export NCCL_IB_HCA=mlx5" in script and "export NCCL_IB_GID_INDEX=3" in script
    assert "export NCCL_SOCKET_IFNAME='^lo,docker0'" in script
    assert 'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in script
    assert "export MASTER_PORT=$(( 20000 + SLURM_JOB_ID % 20000 ))" in script
    srun = [line for line in script.splitlines() if line.startswith("srun ")]
    assert len(srun) == 1
    assert srun[0].startswith("srun --kill-on-bad-exit=1 ")
    assert "-m launch.node_entry -- " in srun[0]
    assert ('-m torch.distributed.run --nnodes="$SLURM_NNODES" --nproc_per_node=8 --rdzv_backend=c10d '
            '--rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv_id="$SLURM_JOB_ID" -m pretrain ') in srun[0]
    assert srun[0].endswith("cluster=a800 cluster.slurm.partition=train cluster.slurm.account=llm "
                            "cluster.slurm.qos=high cluster.slurm.constraint=a800 +experiment=teleflm_52b "
                            f"data.path=/data/tok/indexed run_dir={tmp_path}/run")
    assert subprocess.run(["bash", "-n", str(tmp_path / "run" / "launch" / "slurm" / "job.sbatch")]).returncode == 0
    assert not (tmp_path / "run" / "launch" / "launch.json").exists()  # nothing submitted


@pytest.mark.parametrize("override, key, says", [
    ("train.global_batch_size=1000", "train.global_batch_size", "use a multiple of 112"),
    ("train.bf16=false", "train.bf16", "train.fp32_on_gpu=true"),
    ("parallel.tensor_model_parallel_size=1", "fit_check", "does not fit"),
])
def test_dry_run_refuses_what_the_trainer_would_naming_the_key(tmp_path, override, key, says):
    """The trainer's rules run before anything is written: a wrong 52B launch costs seconds, not 896 GPUs."""
    args = [a if not a.startswith("run_dir=") else f"run_dir={tmp_path}/run" for a in readme_launch_command()]
    extra = [override] + (["parallel.data_parallel_size=448", "parallel.sequence_parallel=false"]
                          if "tensor_model" in override else [])
    result = run_launch(*args, *extra)
    assert result.returncode == 2, result.stdout[-2000:]
    assert "pretrain would refuse this run" in result.stderr and key in result.stderr and says in result.stderr
    assert not (tmp_path / "run" / "launch").exists()   # no sbatch script written


def test_fp32_on_gpus_runs_when_asked_for_and_bf16_is_the_gpu_default(tmp_path):
    args = [a if not a.startswith("run_dir=") else f"run_dir={tmp_path}/run" for a in readme_launch_command()]
    asked = run_launch(*args, "train.bf16=false", "train.fp32_on_gpu=true", "parallel.tensor_model_parallel_size=8",
                       "parallel.data_parallel_size=56")
    # fp32 at TP4 does not fit 80 GB; at TP8 it does: refused only by the planner if at all
    assert "train.bf16=false on GPUs" not in asked.stderr
    from omegaconf import OmegaConf

    from pretrain.config.resolve import resolve_precision
    cfg = OmegaConf.create({"train": {"bf16": None}})
    resolve_precision(cfg, on_gpu=True)
    assert cfg.train.bf16 is True
    cfg = OmegaConf.create({"train": {"bf16": None}})
    resolve_precision(cfg, on_gpu=False)
    assert cfg.train.bf16 is False


def test_h100_dry_run_one_task_per_gpu_in_a_container(tmp_path):
    result = run_launch("stage=pretrain", "cluster=h100", "cluster.nodes=2", "task_layout=per_gpu",
                        "cluster.slurm.container_image='nvcr.io#nvidia/pytorch:25.01-py3'",
                        "cluster.slurm.container_mounts=/data:/data", "cluster.slurm.signal_delay_s=600",
                        "parallel=tp2", "parallel.data_parallel_size=8", "train.global_batch_size=32",
                        f"launch_dir={tmp_path}", "dry_run=true")
    script = sbatch_of(result, tmp_path)
    directives = re.findall(r"^#SBATCH (.*)$", script, re.M)
    for expected in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task=16",
                     "--mem=1800G", "--time=2880", "--signal=USR1@600", "--requeue"):
        assert expected in directives, (expected, directives)
    assert not any(d.startswith("--partition") for d in directives)  # null keys leave no directive
    assert "export NCCL_NVLS_ENABLE=1" in script
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert ("'--container-image=nvcr.io#nvidia/pytorch:25.01-py3' --container-mounts=/data:/data "
            f"--container-workdir={REPO_ROOT}") in srun
    assert "-m launch.node_entry --per-gpu -- " in srun and "torch.distributed.run" not in srun
    assert srun.split(" -- ")[1].startswith(f"{sys.executable} -m pretrain cluster=h100 cluster.nodes=2 ")
    assert srun.endswith(" parallel=tp2 parallel.data_parallel_size=8 train.global_batch_size=32")


def test_bad_config_fails_before_submission_naming_the_key(tmp_path):
    cases = {
        ("stage=pretrain", "cluster=a800", "cluster.nodes=3", "parallel=teleflm_52b"): "cluster.nodes: world size 896",
        ("stage=pretrian", "cluster=a800"): "stage: unknown stage 'pretrian'",
        ("stage=pretrain", "cluster=a800", "cluster.nodes=112", "parallel=teleflm_52b", "train.lrr=1"):
            "stage_args: pretrain rejects its overrides",
        ("stage=pretrain", "cluster=a800", "cluster.nodes=112", "parallel=teleflm_52b",
         "cluster.slurm.signal_delay_s=400000"): "cluster.slurm.signal_delay_s",
        ("stage=pretrain", "cluster=h100", "cluster.nodes=0"): "cluster.nodes: must be a positive integer",
        ("stage=pretrain", "cluster=local", "task_layout=per_rank"): "task_layout: must be one of",
        ("stage=pretrain", "cluster=a800", "cluster.nodes=112", "parallel=teleflm_52b",
         "cluster.slurm.container_mounts=/a:/a"): "cluster.slurm.container_mounts",
    }
    for args, message in cases.items():
        result = run_launch(*args, f"launch_dir={tmp_path}")
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert f"[launch] configuration error: {message}" in result.stderr, (args, result.stderr)
        assert not (tmp_path / "slurm" / "job.sbatch").exists()


def test_local_launch_runs_a_two_rank_stage_under_torchrun(tmp_path):
    result = run_launch("stage=launch.probe", "cluster=local", f"run_dir={tmp_path}", "parallel=dp2",
                        "steps=3", "step_seconds=0.05")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "done.json").read_text()) == {"steps": 3, "world_size": 2, "restart": 0}
    record = json.loads((tmp_path / "launch" / "launch.json").read_text())
    assert record["command"][1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    # Started again, it resumes from its checkpoint instead of redoing the work.
    result = run_launch("stage=launch.probe", "cluster=local", f"run_dir={tmp_path}", "parallel=dp2",
                        "steps=4", "step_seconds=0.05")
    assert result.returncode == 0, result.stderr
    assert "start at step 3 world=2" in (tmp_path / "progress.log").read_text()


def test_stage_overrides_are_packed_and_sweeps_become_one_list_per_job():
    assert split_argv(["stage=pretrain", "cluster=a800", "model=52b", "run_dir=/r/${x}", "dry_run=true"]) == [
        "stage=pretrain", "cluster=a800", "dry_run=true", "stage_args=['model=52b','run_dir=/r/\\${x}']"]
    swept = split_argv(["-m", "stage=pretrain", "train.lr=1e-4,2e-4", "model=tiny", "data.weights={a:1,b:2}"])
    assert swept == ["-m", "stage=pretrain",
                     "stage_args=['train.lr=1e-4','model=tiny','data.weights={a:1,b:2}'],"
                     "['train.lr=2e-4','model=tiny','data.weights={a:1,b:2}']"]


def test_preemption_flag_is_set_by_the_signal_and_requeue_rule():
    flag = install_preemption_handler()
    previous = signal.getsignal(signal.SIGUSR1)
    assert not flag.should_save_and_exit()
    os.kill(os.getpid(), signal.SIGUSR1)
    assert flag.should_save_and_exit() and flag.should_save_and_exit_all_ranks()
    assert previous is signal.getsignal(signal.SIGUSR1)  # idempotent install
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    assert should_requeue(PREEMPTED_EXIT_CODE, signal_received=False)
    assert should_requeue(1, signal_received=True)       # torchrun reports the worker's 75 as 1
    assert not should_requeue(0, signal_received=True)   # finished anyway: done
    assert not should_requeue(1, signal_received=False)  # a crash is not a preemption
