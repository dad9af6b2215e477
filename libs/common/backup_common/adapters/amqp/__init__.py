"""RabbitMQ: topology, a confirming publisher, the consumer of a handler table, the broker link."""
