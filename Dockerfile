# AMIRA server image. Run it next to NVIDIA's Triton container (see README, "Production with Triton").
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SERVER_HOST=0.0.0.0 \
    SERVER_PORT=8057

WORKDIR /app
COPY pyproject.toml README.md ./
COPY amira ./amira
RUN pip install ".[fetch]" \
    && useradd --system --uid 10001 --no-create-home amira \
    && install -d -o amira /models

USER amira
EXPOSE 8057
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8057/health', timeout=2)"]

ENTRYPOINT ["amira"]
CMD ["serve"]
