"""One exception type for inputs that cannot work, raised before any training starts."""


class ConfigError(ValueError):
    """A config value or input file that cannot work; the message names the key or file."""


def require(condition: bool, key: str, message: str) -> None:
    """Raise ``ConfigError("<key>: <message>")`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{key}: {message}")
