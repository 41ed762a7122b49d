"""Prefect flows that send, receive and gate email through MultiMail."""
