"""`make bench`: vecq against in-process FAISS and a naive FastAPI + FAISS server (see bench/__main__.py)."""
