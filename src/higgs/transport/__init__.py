"""asyncio adapters that move bytes: WebSocket relay link, UDP bridge."""
