"""Kafka messaging: the embedded broker, event codecs, producers, the consumer loop, dead letters."""
