"""Test helpers: a private RabbitMQ node and consumers that count what arrived."""
