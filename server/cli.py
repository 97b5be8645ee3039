"""`zoo serve`: serve a model repository over gRPC (KServe v2 / Triton)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from server.app import ZooServer, serve
from server.settings import ServeSettings
from server.supervisor import Supervisor, supervise
from zoo.settings import add_settings_arguments, settings_from_args

log = logging.getLogger(__name__)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors; `worker` names the process of
    several (zoo serve --processes N) that wrote it."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = {} if worker is None else {"worker": worker}

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            **self._worker,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(log_format: str, level: str, worker: int | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        who = "" if worker is None else f"worker {worker} "
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s")
        )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def _announce(server: ZooServer | Supervisor) -> None:
    # The one line of CLI output: scripts and tests read the bound ports from it.
    metrics = f", metrics on port {server.metrics_port}" if server.metrics_port else ""
    http = f", http on port {server.http_port}" if server.http_port else ""
    processes = f" ({server.count} processes)" if isinstance(server, Supervisor) else ""
    print(
        f"zoo serve: ready on {server.settings.host}:{server.port}{metrics}{http}{processes}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="zoo serve",
        description="Serve a model repository over gRPC (KServe v2 / Triton protocol).",
    )
    add_settings_arguments(parser, ServeSettings)
    settings = settings_from_args(ServeSettings, parser.parse_args(argv))
    configure_logging(settings.log_format, settings.log_level)
    log.info("settings: %s", settings.model_dump_json())
    if settings.processes > 1:
        return supervise(settings, on_ready=_announce)
    return serve(settings, on_ready=_announce)
