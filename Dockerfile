# syntax=docker/dockerfile:1
# One image for the API, the tracker and every connector (the command differs):
#   docker run IMAGE api | tracker | connector mqtt | connector http | connector coap
# and, for the demo profile only, a `demo` target with the simulated Pico W and CoAP
# sensor (the dev tools are never in the runtime image) and an `ot2-agent` target.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: dependencies from the pinned constraints into a virtualenv ----------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/pusher
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY preservarium_pusher_api ./preservarium_pusher_api
COPY connectors ./connectors
COPY pusher_cli ./pusher_cli
RUN /opt/pusher/bin/pip install -c constraints.txt ".[redis]" \
    && /opt/pusher/bin/pip check

# -- runtime: the virtualenv only, a non-root user ------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/pusher/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    API_HOST=0.0.0.0 \
    CONNECTOR_METRICS_HOST=0.0.0.0 \
    HEALTHCHECK_URL=http://127.0.0.1:8000/health
RUN groupadd --system --gid 10001 pusher \
    && useradd --system --uid 10001 --gid pusher --home-dir /var/lib/pusher --create-home pusher
COPY --from=build /opt/pusher /opt/pusher
USER pusher
WORKDIR /var/lib/pusher
# API, tracker metrics, connector health/metrics
EXPOSE 8000 9101 9102
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["pusher-healthcheck"]
ENTRYPOINT ["pusher"]
CMD ["api"]

# -- demo: simulated devices (the Pico W simulator runs the firmware's own device.py) -----
FROM runtime AS demo
USER root
COPY devtools /tmp/devtools
COPY firmware/pico_w /opt/pico-firmware
RUN /opt/pusher/bin/pip install --no-deps /tmp/devtools && rm -rf /tmp/devtools
ENV PICO_FIRMWARE_DIR=/opt/pico-firmware
USER pusher
ENTRYPOINT ["python", "-m"]
CMD ["pusher_dev.pico_simulator", "--help"]

# -- the OT-2 agent on opentrons.simulate (deployed alone on a robot; here for the demo) ----
FROM ${PYTHON_IMAGE} AS ot2-agent
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 OT2_SIMULATE=1 \
    HEALTHCHECK_URL=http://127.0.0.1:31960/health
COPY constraints.txt firmware/ot2/requirements.txt /tmp/
RUN pip install -c /tmp/constraints.txt -r /tmp/requirements.txt
COPY firmware/ot2 /opt/ot2-agent
COPY preservarium_pusher_api/healthcheck.py /opt/ot2-agent/healthcheck.py
RUN groupadd --system --gid 10001 ot2 \
    && useradd --system --uid 10001 --gid ot2 --home-dir /var/lib/ot2 --create-home ot2
USER ot2
WORKDIR /opt/ot2-agent
EXPOSE 31960
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/opt/ot2-agent/healthcheck.py"]
ENTRYPOINT ["python", "ot2_agent.py", "--host", "0.0.0.0", "--state-dir", "/var/lib/ot2/state"]
