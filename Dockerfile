# The presence monitor (and CLI) as an image: docker compose builds it (see docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY presence ./presence
RUN pip install --no-cache-dir . && useradd --system --uid 10001 presence
USER presence
ENTRYPOINT ["presence"]
CMD ["monitor", "-c", "/etc/presence/presence.toml"]
