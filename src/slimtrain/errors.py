"""The one exception type for mistakes in what the user asked for."""


class UserError(ValueError):
    """A bad path, flag, corpus or checkpoint. The CLI prints the message alone (no traceback) and
    exits with a non-zero code, so the message must say what is wrong and what to do."""
