"""The HTTP service for an exported student (FastAPI + uvicorn)."""
