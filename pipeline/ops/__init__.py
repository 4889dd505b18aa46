"""The verbs around a run: submitting it to a Ray cluster and watching it (`submit.py`, over
`client.py` and `package.py`), and scheduling it (`schedule.py`, `cron.py`).

Nothing here imports Ray at module level: `pipeline --help` stays instant.
"""
