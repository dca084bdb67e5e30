FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY worker ./worker
RUN pip install --no-cache-dir -c constraints.txt . && useradd --system --uid 10001 worker && mkdir /data && chown worker /data
USER worker
ENV SECURE_SESSION_DATA_DIR=/data
EXPOSE 6066
ENTRYPOINT ["secure-session"]
CMD ["worker"]
