"""What MultiMail delivers: webhooks verified by the receiver, and exactly one `answer-inbound`
run started for each inbound email (`starter.py`), found again by its email (`answer_run.py`)."""
