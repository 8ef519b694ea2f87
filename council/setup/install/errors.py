from council.errors import CouncilError


class SetupError(CouncilError, RuntimeError):
    """A setup step that cannot work; the message is one line that says what and why."""
