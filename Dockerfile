# The voltguard image: the `voltguard` console script and its dependencies.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY topics ./topics
COPY billing ./billing
COPY models ./models
COPY streams ./streams
COPY deploy ./deploy
RUN pip install --no-cache-dir -e .
USER nobody
ENTRYPOINT ["voltguard"]
CMD ["--help"]
