"""A real single-node SLURM for tests, from Debian's packages (installed by .ci/install-slurm): munged, slurmctld and slurmd on
this machine, two fake GPUs (character devices declared as gres), a `debug` (default) and a
`gpu` partition, no accounting database.

The node is declared larger than the machine (`SlurmdParameters=config_overrides`: 16 CPUs,
250 GB) so that the workflow's real resource requests (8 CPUs per GPU job, 16 GB, twice that on
a retry) can be scheduled; nothing enforces them here (no cgroups). Every daemon runs in the
foreground as a child of the test and is stopped by its pid; the configuration files it wrote
under /etc/slurm (srun inside a job reads only those) are put back as they were.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ["slurm-wlm", "slurm-client", "slurmctld", "slurmd", "munge"]
COMMANDS = ["slurmctld", "slurmd", "munged", "munge", "unmunge", "sbatch", "squeue", "scontrol", "scancel", "sinfo"]
SBIN = "/usr/local/sbin:/usr/sbin:/sbin"
ETC = Path("/etc/slurm")
MARK = "# written by dginstyle's tests (tests/slurm_cluster.py)"


class ClusterError(RuntimeError):
    """The cluster could not be started: the message says why, with the daemons' logs."""


class ClusterUnavailable(ClusterError):
    """This machine already has a SLURM of its own, which the tests leave alone."""


def which(command: str) -> str | None:
    return shutil.which(command, path=f"{os.environ.get('PATH', '')}:{SBIN}")


def missing_reason() -> str | None:
    """The one-line reason the SLURM tests must skip (SLURM is not installed), or None. The
    tests never install system packages: .ci/install-slurm does, when asked."""
    missing = [c for c in COMMANDS if not which(c)]
    if missing:
        return f"SLURM is not installed (missing {', '.join(missing)}); `bash .ci/install-slurm` installs {' '.join(PACKAGES)} (root, apt-get)"
    return None


def running(name: str) -> bool:
    """Whether a process of that exact name runs (not one of ours: checked before starting)."""
    return subprocess.run(["pgrep", "-x", name], capture_output=True).returncode == 0


def slurm_conf(root: Path, host: str) -> str:
    return f"""{MARK}
ClusterName=dginstyletest
SlurmctldHost={host}(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
# finished jobs stay visible to scontrol/squeue for an hour (the tests read them afterwards;
# the executor plugin's squeue status needs MinJobAge >= 3x its first-check delay)
MinJobAge=3600
# 1 s from SIGTERM to SIGKILL after scancel: with the default 30 s (5 s tried), a job that
# Snakemake resubmitted within that time once got a stray SIGTERM when it ran out (seen once
# in many runs, here only: proctrack/linuxproc without cgroups).
KillWait=1
DefMemPerCPU=1000
GresTypes=gpu
NodeName={host} NodeAddr=127.0.0.1 CPUs=16 Boards=1 SocketsPerBoard=1 CoresPerSocket=16 ThreadsPerCore=1 RealMemory=250000 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=ALL Default=NO MaxTime=INFINITE State=UP
"""


@dataclass
class Job:
    """One SLURM job as `scontrol show job` reports it."""

    id: int
    fields: dict[str, str]

    @property
    def state(self) -> str:
        return self.fields.get("JobState", "")

    @property
    def comment(self) -> str:
        return self.fields.get("Comment", "")

    @property
    def partition(self) -> str:
        return self.fields.get("Partition", "")

    @property
    def gpus(self) -> int:
        """GPUs requested (--gpus or --gres) or allocated."""
        text = " ".join(self.fields.get(k, "") for k in ("TresPerJob", "TresPerNode", "ReqTRES", "AllocTRES", "Gres"))
        counts = [int(n) for n in re.findall(r"gres[:/]gpu[:=](\d+)", text)]
        return max(counts, default=0)

    @property
    def mem_mb(self) -> int:
        value = self.fields.get("MinMemoryNode", "0")
        number = float(re.match(r"[\d.]+", value).group())
        return int(number * {"G": 1024, "T": 1024 * 1024}.get(value[-1], 1))

    def rule(self, rules: list[str]) -> str | None:
        """The Snakemake rule of this job, from the executor's `--comment rule_<rule>[_wildcards_…]`."""
        for name in sorted(rules, key=len, reverse=True):
            if self.comment == f"rule_{name}" or self.comment.startswith(f"rule_{name}_wildcards_"):
                return name
        return None


@dataclass
class SlurmCluster:
    root: Path
    host: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    processes: list[subprocess.Popen] = field(default_factory=list)
    backups: dict[Path, bytes | None] = field(default_factory=dict)

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    def _write_etc(self, name: str, text: str) -> None:
        path = ETC / name
        if path not in self.backups:  # put back at stop; a leftover of an earlier test run goes
            keep = path.exists() and MARK not in path.read_text(errors="replace")
            self.backups[path] = path.read_bytes() if keep else None
        ETC.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def _spawn(self, name: str, command: list[str], **kwargs) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.out", "ab")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kwargs)
        log.close()
        self.processes.append(process)
        return process

    def _munge_works(self) -> bool:
        encoded = subprocess.run([which("munge"), "-n"], capture_output=True)
        if encoded.returncode != 0:
            return False
        return subprocess.run([which("unmunge")], input=encoded.stdout, capture_output=True).returncode == 0

    def start(self) -> None:
        for daemon in ("slurmctld", "slurmd"):
            if running(daemon):
                raise ClusterUnavailable(f"a {daemon} not started by the tests is already running on this machine")
        for existing in (ETC / "slurm.conf", ETC / "gres.conf"):
            if existing.exists() and MARK not in existing.read_text(errors="replace"):
                raise ClusterUnavailable(f"{existing} exists and is not the tests' own: refusing to replace a real configuration")
        for sub in ("state", "spool", "log", "fakegpu"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for index in range(2):  # fake GPUs: character devices (slurmd refuses regular files)
            device = self.root / "fakegpu" / f"nvidia{index}"
            if not device.exists():
                os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        self._write_etc("slurm.conf", slurm_conf(self.root, self.host))
        self._write_etc("gres.conf", f"{MARK}\nNodeName={self.host} Name=gpu File={self.root}/fakegpu/nvidia[0-1]\n")

        if not self._munge_works():
            for folder in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
                os.makedirs(folder, exist_ok=True)
                shutil.chown(folder, "munge", "munge")
            if not Path("/etc/munge/munge.key").exists():
                subprocess.run([which("mungekey"), "--create"], check=True, capture_output=True)
                shutil.chown("/etc/munge/munge.key", "munge", "munge")
            self._spawn("munged", [which("munged"), "--foreground", "--force"], user="munge", group="munge")
            self._wait("munge to answer", self._munge_works, 30)

        self._spawn("slurmctld", [which("slurmctld"), "-D", "-c", "-i"])
        self._spawn("slurmd", [which("slurmd"), "-D", "-N", self.host])
        self._wait("the node to be idle", lambda: self.node_state() == "idle", 60)

    def _wait(self, what: str, ready, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for process in self.processes:
                if process.poll() is not None:
                    raise ClusterError(f"{process.args[0]} exited ({process.returncode}) while waiting for {what}\n{self.logs()}")
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out after {timeout} s waiting for {what}\n{self.logs()}")
            time.sleep(0.2)

    def node_state(self) -> str:
        result = subprocess.run(["sinfo", "--noheader", "-n", self.host, "-o", "%t"], capture_output=True, text=True)
        return result.stdout.strip().splitlines()[0].rstrip("*") if result.returncode == 0 and result.stdout.strip() else ""

    def logs(self, tail: int = 3000) -> str:
        parts = []
        for path in sorted(self.log_dir.glob("*")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    def jobs(self) -> list[Job]:
        """Every job slurmctld still remembers (MinJobAge keeps finished ones an hour)."""
        result = subprocess.run(["scontrol", "--oneliner", "show", "job"], capture_output=True, text=True, check=True)
        jobs = []
        for line in result.stdout.splitlines():
            fields: dict[str, str] = {}
            for key, value in re.findall(r"(?:^|\s)([A-Za-z][A-Za-z:/_]*)=(\S*)", line):
                fields.setdefault(key, value)
            if "JobId" in fields:
                jobs.append(Job(int(fields["JobId"]), fields))
        return sorted(jobs, key=lambda job: job.id)

    def queue(self) -> list[tuple[int, str, str]]:
        """(job id, state, comment) of the jobs squeue lists."""
        result = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%i|%T|%k"], capture_output=True, text=True)
        rows = []
        for line in result.stdout.splitlines():
            job_id, state, comment = line.strip().split("|", 2)
            rows.append((int(job_id), state, comment))
        return rows

    def stop(self) -> None:
        """Cancel what is left, stop every daemon this object started (by pid, newest first),
        and put back /etc/slurm as it was."""
        if self.processes and which("scancel"):
            subprocess.run(["scancel", "--full", "--user", "root"], capture_output=True, timeout=30)
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes.clear()
        for path, content in self.backups.items():
            if content is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(content)
        self.backups.clear()
