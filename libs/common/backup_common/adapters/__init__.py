"""The only home of asyncmy, aio-pika and the aiohttp server: the ports implemented, settings, the service runtime."""
