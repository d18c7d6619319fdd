# The toolkit's runtime image: runs every submission in this repository (defense/, baselines/*,
# attacks/*) the way the NIPS 2017 competition did, offline and as a non-root user.
#   docker/build_image.sh        # builds the wheelhouse, the base if needed, then this file
# The build needs no network: everything comes from docker/wheelhouse/ in the build context
# (deps/: the pinned runtime dependencies, project/: the toolkit's wheel).
# On a machine with a registry the default base works; without one, build_image.sh passes a
# debootstrapped Debian 12 (BASE_IMAGE=local/python:3.11-bookworm, Debian's python3 3.11 + venv).
ARG BASE_IMAGE=python:3.11-slim

# ---- stage 1: the dependencies in a virtual environment (the wheels stay in this stage) ----------
FROM ${BASE_IMAGE} AS deps
# (build_image.sh prunes superseded images by this label)
LABEL org.opencontainers.image.title="hgd-toolkit"
COPY docker/wheelhouse/deps/ /wheelhouse/
# A venv works the same on both bases (Debian's python3 refuses system-wide pip installs).
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheelhouse --upgrade pip \
 && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheelhouse -r /wheelhouse/requirements.txt \
 && chmod -R a+rX /opt/venv

# ---- stage 2: the runtime image --------------------------------------------------------------------
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="hgd-toolkit" \
      org.opencontainers.image.description="NIPS 2017 adversarial competition toolkit (HGD): runs its submissions offline"
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    HGD_CACHE_DIR=/opt/hgd-cache \
    KERAS_BACKEND=tensorflow \
    KERAS_HOME=/tmp/.keras \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=1
COPY --from=deps /opt/venv /opt/venv
COPY docker/wheelhouse/project/ /tmp/project/
# The toolkit, then the default ensemble's (Lite0/1/2) converted weights baked into $HGD_CACHE_DIR
# (containers run read-only without network: nothing may be converted or downloaded at run time).
# The competition's four models are never baked: their weights come from `hgd-fetch-weights` on a
# networked machine, and a derived image copies that cache in (docs/guide/competition-models.md).
# Only the cache is chmod'ed here: touching /opt/venv in this stage would copy all of it into a new layer.
RUN pip install --no-cache-dir --no-index --no-deps /tmp/project/*.whl \
 && rm -rf /tmp/project \
 && python3 -c "from hgd.zoo import DEFAULT_ENSEMBLE, get_model; [get_model(m).build_backbone() for m in DEFAULT_ENSEMBLE]" \
 && rm -rf /tmp/.keras /tmp/* \
 && chmod -R a+rX /opt/hgd-cache \
 && ls -l /opt/hgd-cache

WORKDIR /code
# nobody:nogroup; the Docker executor passes the same user explicitly.
USER 65534:65534
CMD ["python3", "-c", "import hgd; print('hgd-toolkit image: run a submission as ./<entry_point> in /code')"]
