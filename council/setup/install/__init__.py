"""`council setup`: install llama-server and the small real models into council's cache."""

from council.setup.install.errors import SetupError

__all__ = ["SetupError"]
