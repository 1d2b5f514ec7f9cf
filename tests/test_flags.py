"""Each entry point takes its own flags and no others: --help lists exactly them, and a flag of
another entry point is one line and exit status 2."""
import re

import pytest
from cli import run_module

ENV = {"--env", "--env_impl", "--pos_noise", "--seed"}
TRAINER = ENV | {
    "--posemb", "--encoder", "--use_lstm", "--no_lstm", "--hidden_size",
    "--mode", "--total_steps", "--batch_size", "--unroll_length", "--num_learner_threads", "--discounting",
    "--entropy_cost", "--baseline_cost", "--reward_clipping", "--learning_rate", "--warmup_steps", "--alpha",
    "--momentum", "--epsilon", "--grad_norm_clipping", "--max_nonfinite_updates",
    "--xpid", "--savedir", "--checkpoint", "--gpu_n", "--disable_cuda", "--num_threads", "--test_episodes",
    "--record", "--allow_env_mismatch", "--checkpoint_interval", "--log_interval",
}
INFERENCE = {"--num_inference_threads", "--max_inference_batch_size", "--inference_timeout_ms",
             "--max_learner_queue_size", "--inference_device", "--learner_device", "--env_timeout_s",
             "--connect_timeout_s"}
# Between hosts: mutual TLS, or plaintext asked for (both ends of an env server connection).
TLS = {"--tls_cert", "--tls_key", "--tls_ca", "--insecure"}
DISTRIBUTED = {"--dist_backend", "--dist_timeout_s"}  # data-parallel learners under torchrun
FLAGS = {
    "torchbeast.monobeast": TRAINER | {"--num_actors", "--num_buffers"},
    "torchbeast.polybeast_learner": TRAINER | INFERENCE | TLS | DISTRIBUTED | {
        "--env_servers", "--env_servers_file", "--pipes_basename", "--num_servers",
        "--registry_bind", "--server_lease_s"},  # the learner's end of registration
    # Starts its own env servers on unix sockets: no registration, TLS or torchrun flags.
    "torchbeast.polybeast": TRAINER | INFERENCE | {"--pipes_basename", "--num_servers"},
    "torchbeast.polybeast_env": ENV | TLS | {"--num_servers", "--pipes_basename", "--bind", "--max_streams",
                                             "--learner", "--advertise"},  # the server's end of registration
}


def listed_flags(help_text):
    """The flags of --help's option entries ('  --env ENV   Gym id...', '  -h, --help  ...')."""
    flags = set()
    for line in help_text.splitlines():
        if re.match(r"^  -", line):
            flags.update(re.findall(r"--\w+", line.strip().split("  ")[0]))
    return flags - {"--help"}


@pytest.mark.parametrize("module", sorted(FLAGS))
def test_help_lists_exactly_the_flags_of_the_entry_point(module):
    assert listed_flags(run_module(module, "--help").stdout) == FLAGS[module]


@pytest.mark.parametrize("module,args,hint", [
    ("torchbeast.polybeast", ["--num_actors", "4"], "--num_servers"),
    ("torchbeast.polybeast_learner", ["--num_actors", "4"], "--num_servers"),
    ("torchbeast.polybeast_learner", ["--num_buffers=8"], "--max_learner_queue_size"),
    ("torchbeast.polybeast", ["--env_servers", "unix:/tmp/a"], "use polybeast_learner"),
    ("torchbeast.monobeast", ["--num_servers", "2"], None),
    ("torchbeast.polybeast_env", ["--total_steps", "10"], None),
    ("torchbeast.polybeast", ["--registry_bind", "127.0.0.1:4400"], None),
])
def test_a_flag_of_another_entry_point_is_one_line_and_exit_2(module, args, hint):
    proc = run_module(module, *args, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    flag = args[0].split("=")[0]
    assert proc.stderr.count("\n") == 1 and "unrecognized arguments" in proc.stderr and flag in proc.stderr
    assert hint is None or hint in proc.stderr
    assert proc.stdout == ""
