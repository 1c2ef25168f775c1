"""Prefect flows: thin orchestration around the ``selfsup`` package (no training logic here).

    python -m flows.training      run the pipeline (dvc repro, stage by stage), gate and promote the new versions
    python -m flows.monitoring    score new inbox batches with the champion sentiment model, alert on a surge
    python -m flows.routing       route new customer messages with the champion intent model
    python -m flows.deployments   local Prefect server + every deployment on its schedule (`make orchestrate`)
"""
