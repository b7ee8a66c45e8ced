"""The one exception base every package raises for problems a user can fix.

Command-line entry points print these as one clear message, without a traceback.
"""


class UserError(Exception):
    """Bad input, missing file, unreachable device: something the user can fix; the message says how."""
