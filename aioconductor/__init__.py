"""aioconductor: an asyncio-native conductor framework."""
