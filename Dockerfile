# careloop's image: one image for every process of the Procfile (web, worker, mailer).
#   docker build -t careloop .
#   docker compose up        # compose.yaml: PostgreSQL, Redis, an SMTP catcher and the processes
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md Procfile ./
COPY careloop careloop
COPY service service
COPY workers workers
COPY integrations integrations
COPY config config
COPY migrations migrations
RUN pip install . && useradd --system --home /app careloop && chown careloop /app
USER careloop

EXPOSE 8000
# The Procfile's web line; compose.yaml gives the worker and the mailer their own commands.
CMD ["gunicorn", "--config", "config/gunicorn.conf.py", "--bind", "0.0.0.0:8000", "careloop.service:create_app()"]
