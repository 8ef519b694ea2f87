class SetupError(RuntimeError):
    """A setup step that cannot work; the message is one line that says what and why."""
