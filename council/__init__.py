"""council: answer with a council of small local models, by vote."""

__version__ = "0.1.0"

__all__ = ["__version__"]
