"""Environments and tools: search QA, synthetic worlds, retrievers, rewards, datasets."""
