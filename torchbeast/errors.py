"""User-facing errors.

A `ConfigError` is bad input from the user (a flag, a file, an address): the command-line entry
points print its message as one line and exit with status 2, never a traceback. Raise it with a
message that names the flag, file or address and says what was expected.
"""


class ConfigError(ValueError):
    """Bad user input; the message names what was wrong and what was expected."""
