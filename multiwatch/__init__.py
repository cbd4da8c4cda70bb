"""multiwatch: one supervisor, one watcher child per directory, events on RabbitMQ."""

__version__ = "0.1.0"
