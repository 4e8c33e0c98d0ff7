"""One exception type for inputs that cannot work, raised before any training starts, and its message helpers."""


class ConfigError(ValueError):
    """A config value or input file that cannot work; the message names the key or file."""


def require(condition: bool, key: str, message: str) -> None:
    """Raise ``ConfigError("<key>: <message>")`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


def error_line(exc: BaseException) -> str:
    """One line for a ConfigError from a library exception and its causes."""
    # datasets chains the parser's error; its own message is often just "An error occurred".
    msgs = []
    while exc is not None and len(msgs) < 4:
        msg = str(exc).strip().splitlines()
        if msg:
            msgs.append(msg[0])
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(dict.fromkeys(msgs)) or "unknown error"
