# The exit handler's image: `exit-handler` as entrypoint, running as a numeric non-root user.
# Build: docker build -t kfp-exit-handler:0.1.0 .
FROM python:3.11.7-slim-bookworm AS build
WORKDIR /src
# Dependencies first (cached while only the code changes), at the versions constraints.txt pins.
COPY constraints.txt setup.cfg pyproject.toml README.md ./
COPY exit_handler ./exit_handler
RUN python -m venv /opt/exit-handler \
    && /opt/exit-handler/bin/pip install --no-cache-dir --disable-pip-version-check \
       -c constraints.txt . \
    && /opt/exit-handler/bin/pip uninstall --yes pip setuptools wheel

FROM python:3.11.7-slim-bookworm
# No compiler, pip cache or sources: only the virtual environment is copied over.
COPY --from=build /opt/exit-handler /opt/exit-handler
ENV PATH=/opt/exit-handler/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["exit-handler"]
CMD ["publish", "--help"]
