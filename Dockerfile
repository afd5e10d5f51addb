# Dowse service image (CPU). The serving path needs no torch; export runs at build time with the
# `export` extra in a builder stage so the runtime image carries only ONNX files.
FROM python:3.11-slim AS builder
WORKDIR /src
COPY pyproject.toml README.md ./
COPY embedder embedder
COPY indexer indexer
COPY gateway gateway
COPY services services
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir '.[export]' \
 && dowse models export minilm bge-small ms-marco-l12 --cache-dir /models

FROM python:3.11-slim
WORKDIR /app
COPY --from=builder /src /app
RUN pip install --no-cache-dir .
COPY --from=builder /models /models
ENV DOWSE_DATA_DIR=/data DOWSE_MODEL_CACHE=/models DOWSE_HOST=0.0.0.0 DOWSE_PORT=8000 \
    DOWSE_AUTO_EXPORT=false
EXPOSE 8000
VOLUME ["/data"]
ENTRYPOINT ["dowse", "serve"]
