"""The one exception type for mistakes in what the user asked for."""


class UserError(ValueError):
    """A bad path, flag, corpus or checkpoint. The CLI prints the message alone (no traceback) and
    exits with a non-zero code, so the message must say what is wrong and what to do."""


def first_line(err: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message, at most ``limit`` characters (the type's name
    when the message is empty: an empty message must not break the error that reports it)."""
    lines = str(err).strip().splitlines()
    return lines[0][:limit] if lines else type(err).__name__
