FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends make nodejs npm dssp && rm -rf /var/lib/apt/lists/*
WORKDIR /srv/protsae
COPY . .
RUN python -m pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && python -m pip install --no-cache-dir -e . && ./scripts/install-assets.sh
ENV PROTSAE_DATA_DIR=/var/lib/protsae PROTSAE_HOST=0.0.0.0
EXPOSE 8000
CMD ["protsae", "serve"]
