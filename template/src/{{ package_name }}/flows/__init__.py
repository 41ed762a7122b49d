"""The deployed flows, one module per deployment in prefect.yaml, named after it.

`answer_inbound.py` is the `answer-inbound` deployment, `status_digest.py` is `status-digest`,
and so on; `serve` and `prefect deploy` both read the entrypoints from prefect.yaml.
"""
