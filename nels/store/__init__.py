"""The library: one folder the user owns (SQLite catalogue + FAISS indexes + media files)."""
