"""secure-session: decides, for every bot message on Kafka, whether its session is authenticated."""

__version__ = "0.2.0"  # the package version (pyproject.toml reads it); CHANGELOG.md
