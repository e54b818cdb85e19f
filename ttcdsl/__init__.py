"""ttcdsl: a declarative language for test-time compute strategies and an async runtime."""

__version__ = "0.1.0"
