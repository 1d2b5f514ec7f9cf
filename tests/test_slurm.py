"""scripts/slurm/train.sbatch on a real one-node Slurm cluster (Debian's slurm-wlm with munge), set
up in a temporary folder: munged, slurmctld and slurmd are started by the test and stopped at its
end (only those, by pid). Root only: it may apt-get the packages, and slurmd runs jobs as root."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from ports import free_port

from torchbeast.core.checkpoint import load_checkpoint
from torchbeast.core.run_outputs import read_log

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
DAEMONS = ["munged", "slurmctld", "slurmd"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a Slurm cluster of our own needs root (CI runs as root)")


def ensure_packages():
    """apt-get installs Slurm and munge when missing; returns the seconds it took (0 when present)."""
    if all(shutil.which(daemon) or os.path.exists(f"/usr/sbin/{daemon}") for daemon in DAEMONS):
        return 0.0
    start = time.monotonic()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, env=env, timeout=300)
    done = subprocess.run(["apt-get", "install", "-y", "-qq", *PACKAGES], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, f"apt-get install {' '.join(PACKAGES)} failed:\n{done.stderr}"
    return time.monotonic() - start


SLURM_CONF = """\
ClusterName=tbtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={dir}/munge/munge.socket
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
# What works in a container: no cgroups, no accounting.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
KillWait=10
NodeName={host} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


class Cluster:
    """A one-node Slurm cluster in `folder`; `env` is what its client commands need (SLURM_CONF)."""

    def __init__(self, folder):
        self.folder = folder
        self.processes = []
        for sub in ("state", "spool", "munge"):
            os.makedirs(os.path.join(folder, sub))
        os.chmod(folder, 0o755)
        os.chmod(os.path.join(folder, "munge"), 0o711)  # munged wants its socket folder private
        key = os.path.join(folder, "munge", "munge.key")
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True)
        conf = os.path.join(folder, "slurm.conf")
        with open(conf, "w") as f:
            f.write(SLURM_CONF.format(host=socket.gethostname(), ctld_port=free_port(), d_port=free_port(),
                                      dir=folder))
        self.env = dict(os.environ, SLURM_CONF=conf)
        munge = os.path.join(folder, "munge")
        self._start(["munged", "--foreground", "--force", f"--socket={munge}/munge.socket", f"--key-file={key}",
                     f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log", f"--seed-file={munge}/seed"])
        self._wait_for(lambda: os.path.exists(f"{munge}/munge.socket"), "munged's socket")
        self._start(["slurmctld", "-D", "-c", "-i", "-f", conf])
        self._start(["slurmd", "-D", "-f", conf])
        self._wait_for(lambda: "idle" in self.run("sinfo", "-h", "-o", "%T").stdout, "the node to be idle")

    def _start(self, command):
        with open(os.path.join(self.folder, os.path.basename(command[0]) + ".out"), "w") as log:
            self.processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env))

    def _wait_for(self, ready, what, timeout=30):
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [p.args[0] for p in self.processes if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise AssertionError(f"waiting for {what}: {dead or 'timed out'}\n{self.logs()}")
            time.sleep(0.2)

    def run(self, *command, timeout=30):
        return subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=timeout)

    def logs(self):
        texts = []
        for name in ("slurmctld.log", "slurmd.log", "munged.out", "slurmctld.out", "slurmd.out"):
            path = os.path.join(self.folder, name)
            if os.path.exists(path):
                with open(path) as f:
                    texts.append(f"== {name}\n" + "".join(f.readlines()[-20:]))
        return "\n".join(texts)

    def stop(self):
        """Cancels what still runs, then stops the daemons this cluster started (by pid)."""
        if all(p.poll() is None for p in self.processes):
            self.run("scancel", "--user=root")
            deadline = time.monotonic() + 20
            while self.run("squeue", "-h").stdout.strip() and time.monotonic() < deadline:
                time.sleep(0.5)
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@pytest.fixture
def cluster(tmp_path_factory):
    installed_s = ensure_packages()
    start = time.monotonic()
    made = Cluster(str(tmp_path_factory.mktemp("slurm")))
    print(f"\napt-get install: {installed_s:.1f} s; cluster up (munged, slurmctld, slurmd, node idle): "
          f"{time.monotonic() - start:.1f} s")
    yield made
    start = time.monotonic()
    made.stop()
    print(f"cluster stopped in {time.monotonic() - start:.1f} s")


def plaintext_flag():
    """`--insecure` when the commands take it (plaintext between hosts then has to be asked for)."""
    from torchbeast import polybeast_env

    return "--insecure" if "--insecure" in polybeast_env.make_parser().format_help() else ""


def job_fields(cluster, job_id):
    shown = cluster.run("scontrol", "show", "job", "--oneliner", job_id).stdout.split()
    return dict(field.split("=", 1) for field in shown if "=" in field)


def progress_steps(text):
    """The steps of the learner's progress lines ('step  1234 | ...') in the job's output."""
    return [int(line.split()[1]) for line in text.splitlines() if line.startswith("step ") and "SPS" in line]


def submit(cluster, tmp_path, total_steps, layout):
    """Submits train.sbatch for a CueMemory run to `total_steps` with 2 env servers and 2 learners
    (GPUS_PER_NODE=2, on CPUs here); `layout` are the sbatch options that shape the allocation.
    Returns (job id, the job's output file)."""
    train_args = ("--encoder small --hidden_size 32 --unroll_length 10 --batch_size 4 --log_interval 1 "
                  f"--num_learner_threads 1 --num_inference_threads 1 --num_threads 1 --total_steps {total_steps}")
    env = dict(cluster.env, ENV_NODES="1", SERVERS_PER_NODE="2", GPUS_PER_NODE="2", ENV_ID="torchbeast:CueMemory-v0",
               XPID="slurm", SAVEDIR=str(tmp_path), TRAIN_ARGS=train_args, TLS_ARGS=plaintext_flag(),
               BASE_PORT=str(free_port()), MASTER_PORT=str(free_port()), REGISTRY_PORT=str(free_port()),
               PYTHON=sys.executable,
               MUJOCO_GL=os.environ.get("MUJOCO_GL", "osmesa"), PYTHONUNBUFFERED="1")
    output = tmp_path / "job.out"
    submitted = subprocess.run(["sbatch", "--parsable", f"--output={output}", f"--chdir={REPO}", *layout,
                                os.path.join(REPO, "scripts", "slurm", "train.sbatch")],
                               capture_output=True, text=True, env=env, timeout=30)
    assert submitted.returncode == 0, submitted.stderr + cluster.logs()
    return submitted.stdout.strip().split(";")[0], output


def watch(cluster, job_id, output, on_poll=lambda job, text: None, timeout=300):
    """Polls the job every 0.5 s until it ends (`sbatch --wait` polls at growing intervals, up to
    ~20 s late), calling `on_poll(job fields, output so far)`; returns (job fields, output, the
    (seconds, state, reason) of each state it went through)."""
    start = time.monotonic()
    job, states = {}, [(0.0, None, None)]
    while job.get("JobState") not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
        assert time.monotonic() - start < timeout, f"job {job_id} still {job.get('JobState')}\n{cluster.logs()}"
        time.sleep(0.5)
        job = job_fields(cluster, job_id)
        if job.get("JobState") != states[-1][1]:
            states.append((round(time.monotonic() - start, 1), job.get("JobState"), job.get("Reason")))
        on_poll(job, output.read_text() if output.exists() else "")
    return job, output.read_text() if output.exists() else "", states[1:]


def test_the_sbatch_script_trains_is_requeued_near_its_time_limit_and_resumes(cluster, tmp_path):
    """The job trains; mid-run its batch shell gets the USR1 that `--signal=B:USR1@180` sends before
    the time limit, requeues the job (the learners save on Slurm's SIGTERM), and the requeued job
    resumes from that checkpoint to --total_steps."""
    total_steps = 8000
    start = time.monotonic()
    # The one-node cluster has 2 CPUs: the script's 3 nodes x 32 CPUs are overridden as a user would.
    job_id, output = submit(cluster, tmp_path, total_steps, ["--nodes=1", "--cpus-per-task=2", "--time=5"])
    signalled_at = None

    def requeue_once_it_learns(job, text):
        nonlocal signalled_at
        if job.get("Reason") == "BeginTime":  # Slurm holds a requeued job ~3 min; not worth waiting for here
            cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
        if signalled_at is None and any(step > 0 for step in progress_steps(text)):
            signalled = cluster.run("scancel", "--batch", "--signal=USR1", job_id)
            assert signalled.returncode == 0, signalled.stderr
            signalled_at = progress_steps(text)[-1]

    job, text, states = watch(cluster, job_id, output, requeue_once_it_learns)
    print(f"job {job_id}: submitted to {job['JobState']} in {time.monotonic() - start:.1f} s, "
          f"{job.get('Restarts')} restart(s), USR1 at step {signalled_at}; states (s, state, reason): {states}")
    assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("COMPLETED", "0:0", "1"), \
        f"{job}\n--- job output:\n{text}\n{cluster.logs()}"
    first, _, second = text.partition("(restart 1)")
    assert "time limit near: requeueing" in first, text
    assert second and "learners exited with status 0" in second, text
    for leg in (first, second):
        assert "2 env server(s)" in leg, leg
        # The servers registered with rank 0, which gave each learner one of them.
        assert leg.count("Every learner has env servers (1, 1 per rank): training starts") == 2, leg
    saved = [int(line.rsplit("at step ", 1)[1].split()[0]) for line in first.splitlines()
             if "Saved checkpoint" in line and "at step " in line]
    assert saved and saved[-1] >= signalled_at and saved[-1] < total_steps, first
    assert f"from step {saved[-1]}" in second, second  # "Resuming ... from step N"
    state = load_checkpoint(str(tmp_path / "slurm" / "model.tar"))
    assert state["step"] >= total_steps, text
    steps = [int(row["step"]) for row in read_log(str(tmp_path / "slurm" / "logs.csv"))]
    assert steps == sorted(steps) and steps[-1] == state["step"]  # trimmed back to the checkpoint on resume
    assert "Learner rank 1 stops at step" in second  # two data-parallel learners (GPUS_PER_NODE=2, on CPUs here)
