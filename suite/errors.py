"""The one exception the CLI turns into a one-line message instead of a traceback."""


class SuiteError(Exception):
    """Bad input from the user: arguments, a config file, a results file."""
