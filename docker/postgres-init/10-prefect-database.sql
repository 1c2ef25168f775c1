-- Runs once, when the PostgreSQL volume is first created (docker-entrypoint-initdb.d): the MLflow database is
-- POSTGRES_DB; Prefect gets a database of its own on the same server.
CREATE DATABASE prefect;
