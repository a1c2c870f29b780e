# vecq image: the API (`python -m api.serve`) and the workers (`celery -A worker worker`) run from it;
# the `flower` stage adds Celery Flower for monitoring. See docker-compose.yml.
#   docker build -t vecq .                      # API + worker image
#   docker build --target flower -t vecq-flower .

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VECQ_DATA_DIR=/data
# A fixed non-root uid: the snapshot volume's files belong to it on every host that mounts the volume.
RUN useradd --create-home --uid 10001 --user-group vecq \
    && mkdir -p /data \
    && chown vecq:vecq /data
WORKDIR /app
# Dependencies first, from pyproject.toml alone, so a code change does not reinstall FAISS and friends.
COPY pyproject.toml ./
# The image is the server: the client's dependencies plus the `server` extra.
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['server']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY README.md ./
COPY api ./api
COPY common ./common
COPY worker ./worker
COPY vecq ./vecq
RUN pip install --no-deps . && rm -rf build *.egg-info

FROM base AS flower
RUN pip install "flower>=2,<3"
USER vecq
EXPOSE 5555
CMD ["celery", "flower", "--port=5555"]

# Last stage = what `docker build .` makes.
FROM base AS app
USER vecq
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 CMD ["python", "-m", "vecq.probe", "api"]
CMD ["python", "-m", "api.serve", "--host", "0.0.0.0", "--port", "8000"]
