# The crmcache application image: one image, a different command per service (docker-compose.yml).
# The base image is pinned to a release and every package to constraints.txt (make lock), so two
# builds a month apart install the same versions.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin crmcache

WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY crmcache ./crmcache
COPY tasks ./tasks
COPY consumer ./consumer
COPY config ./config
COPY ops ./ops
COPY sandbox ./sandbox
RUN pip install -c constraints.txt . && rm -rf /src

USER crmcache
WORKDIR /home/crmcache
EXPOSE 8080 5555 8081
CMD ["crmcache", "--help"]
