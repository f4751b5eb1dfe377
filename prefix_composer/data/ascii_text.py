"""The ASCII rule of the data pipeline, in one place."""

ASCII_RULE = 'text.encode("ascii", "ignore").decode("ascii")'


def to_ascii(text: str) -> str:
    """Drop every non-ASCII character: exactly ``text.encode("ascii", "ignore").decode("ascii")``."""
    return text.encode('ascii', 'ignore').decode('ascii')
