"""Commands run as separate processes whose output is watched line by line, with the time each
line arrived: for the chaos tests and benchmarks/bench_chaos.py, which kill, signal and
partition them while they run."""
import os
import re
import signal
import subprocess
import sys
import threading
import time

# The commands' environment (a test may change it, e.g. TMPDIR, before starting one).
ENV = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "osmesa"), PYTHONUNBUFFERED="1")


class Command:
    """A command in its own session (so a test can signal its whole group), its output read line
    by line with the time each line arrived."""

    def __init__(self, argv, name=None):
        self.name = name or " ".join(map(str, argv[:4]))
        self.proc = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=ENV, start_new_session=True)
        self.lines = []  # (time.monotonic(), line)
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @classmethod
    def module(cls, module, *args, prefix=()):
        return cls([*prefix, sys.executable, "-m", module, *args], name=module)

    @property
    def pid(self):
        return self.proc.pid

    def _read(self):
        with self.proc.stdout:
            for line in self.proc.stdout:
                with self._changed:
                    self.lines.append((time.monotonic(), line.rstrip("\n")))
                    self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def output(self):
        return "\n".join(line for _, line in self.lines)

    def wait_for(self, pattern, timeout, since=0.0):
        """The first line (its time and regex match) matching `pattern` that arrived after
        `since`; fails the test after `timeout` seconds, or when the command ended without one."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            seen = 0
            while True:
                for t, line in self.lines[seen:]:
                    match = regex.search(line)
                    if match and t >= since:
                        return t, match
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (not self._reader.is_alive() and seen == len(self.lines)):
                    raise AssertionError(f"{self.name}: no line matching {pattern!r} within {timeout} s "
                                         f"(exit {self.proc.poll()}); output:\n{self.output()}")
                self._changed.wait(min(left, 0.5))

    def steps(self, since=0.0):
        """(time, step) of each progress line that arrived after `since`."""
        return [(t, int(line.split()[1])) for t, line in list(self.lines)
                if t >= since and line.startswith("step ") and line.split()[1].isdigit()]

    def send(self, signum, group=False):
        (os.killpg if group else os.kill)(self.pid, signum)

    def stop(self, signum=signal.SIGTERM, timeout=30):
        """Signals the command (not its group) and waits for it; its exit status."""
        if self.proc.poll() is None:
            self.send(signum)
        return self.wait(timeout)

    def wait(self, timeout=30):
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} did not end within {timeout} s; output:\n{self.output()}") from None
        self._reader.join(timeout=5)
        return self.proc.returncode

    def kill(self):
        """SIGKILL to the whole session's group (whatever is still there)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
