"""Durable work: a job queue in the database, worker processes that run jobs, progress events.

``queue.py`` (submit, claim, end), ``events.py`` (progress and streaming), ``kinds.py`` (what each
kind of job checks and does), ``sweep.py`` (hyper-parameter sweeps), ``worker.py`` (the processes).
"""
