# The voltguard image: the `voltguard` console script and its dependencies.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY topics ./topics
COPY billing ./billing
COPY models ./models
COPY streams ./streams
COPY deploy ./deploy
# /var/lib/voltguard is owned by nobody: named volumes mounted there start with that owner.
RUN pip install --no-cache-dir -e . \
    && mkdir -p /var/lib/voltguard/model-registry /var/lib/voltguard/api \
    && chown -R nobody /var/lib/voltguard
USER nobody
ENTRYPOINT ["voltguard"]
CMD ["--help"]
