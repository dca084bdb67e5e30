"""secure-session: decides, for every bot message on Kafka, whether its session is authenticated."""

__version__ = "0.1.0"
