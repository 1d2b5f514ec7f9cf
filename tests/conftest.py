"""Suite-wide set-up."""
import signal

# A suite started in the background by a non-interactive shell (`cmd &`, nohup) inherits SIGINT
# ignored, and every command a test starts would too: Python then never raises KeyboardInterrupt,
# and the Ctrl-C tests wait in vain. A handler here is reset to the default in each child at exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
