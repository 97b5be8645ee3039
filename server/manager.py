"""The models being served: scanning the repository, loading and swapping versions.

Readers never lock: each model's entry is an immutable snapshot replaced whole (its
models' metadata replies are rebuilt when the set of ready versions changes). A
request holds a reference to its LoadedModel, so a version swapped out or removed
keeps its session until its in-flight requests finish, then is garbage.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from proto.model_config_pb2 import ModelConfig
from server.config_support import check_supported
from server.model import LoadedModel
from zoo.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
    ZooError,
)
from zoo.repository import (
    CONFIG_FILENAME,
    is_version_name,
    list_models,
    list_versions,
    model_file,
    read_model_config,
)

log = logging.getLogger(__name__)

READY, UNAVAILABLE = "READY", "UNAVAILABLE"
Loader = Callable[[Path, int, ModelConfig], LoadedModel]
Stamp = tuple[int, int, int, int]


@dataclass(frozen=True)
class VersionState:
    state: str
    reason: str = ""


@dataclass(frozen=True)
class _Entry:
    """One model's snapshot. `states` has "" for a model-level problem (a bad config)."""

    versions: dict[int, LoadedModel] = field(default_factory=dict)
    stamps: dict[int, Stamp] = field(default_factory=dict)
    states: dict[str, VersionState] = field(default_factory=dict)
    # Files of versions whose last load failed: a poll retries only once they change.
    failed: dict[int, Stamp] = field(default_factory=dict)

    @property
    def latest(self) -> LoadedModel | None:
        return self.versions[max(self.versions)] if self.versions else None

    def reason(self) -> str:
        return "; ".join(f"{v or 'model'}: {s.reason}" for v, s in self.states.items() if s.reason)


def _stamp(model_dir: Path, version: int, config: ModelConfig) -> Stamp:
    # A changed config or model file (time or size) means a reload.
    cfg = (model_dir / CONFIG_FILENAME).stat()
    try:
        onnx = model_file(model_dir, version, config).stat()
    except FileNotFoundError:
        return (cfg.st_mtime_ns, cfg.st_size, 0, 0)
    return (cfg.st_mtime_ns, cfg.st_size, onnx.st_mtime_ns, onnx.st_size)


class ModelManager:
    def __init__(
        self,
        repository: Path,
        loader: Loader,
        on_change: Callable[[str, bool], None] = lambda name, ready: None,
    ) -> None:
        self.repository = Path(repository)
        # Reasons and messages name files relative to the repository: a client has no
        # business knowing where the server keeps it.
        self._prefixes = tuple(
            dict.fromkeys(f"{p}{os.sep}" for p in (self.repository.resolve(), self.repository))
        )
        self._loader = loader
        self._on_change = on_change
        self._entries: dict[str, _Entry] = {}
        self._unloaded: set[str] = set()  # unloaded on request: polling leaves them alone
        # Configs given with a load request: they replace config.pbtxt until the next load.
        self._overrides: dict[str, ModelConfig] = {}
        self._sync_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # -- reading (any thread, no lock) --

    def get(self, name: str, version: str = "") -> LoadedModel:
        """The model to serve `name`/`version` ("" is the highest ready version)."""
        entry = self._entries.get(name)
        if entry is None:
            # Triton's wording first (its clients look for it), then what is served.
            raise NotFoundError(
                f"Request for unknown model: {name!r} is not found; served models: "
                f"{sorted(self._entries)}"
            )
        model = entry.latest if not version else entry.versions.get(_parse(version))
        if model is not None:
            return model
        state = entry.states.get(version)
        if not version or state is not None:
            raise UnavailableError(
                f"model {name!r} version {version!r} is not ready: {entry.reason()}"
            )
        raise NotFoundError(
            f"model {name!r} has no version {version!r}; ready versions: "
            f"{[str(v) for v in sorted(entry.versions)]}"
        )

    def loaded(self) -> list[LoadedModel]:
        return [m for e in list(self._entries.values()) for _, m in sorted(e.versions.items())]

    def versions_of(self, name: str) -> list[LoadedModel]:
        self.get(name)  # raises NOT_FOUND / UNAVAILABLE with the reason
        # The poller may have removed it since: what it served then is still an answer.
        entry = self._entries.get(name, _Entry())
        return [m for _, m in sorted(entry.versions.items())]

    def index(self) -> list[tuple[str, str, VersionState]]:
        """(name, version, state) for every model and version known, failed ones included,
        and, as Triton lists what a load request could load, a bare name (no version, no
        state) for each model folder in the repository that was never loaded."""
        entries = dict(self._entries)  # a snapshot: a load may publish meanwhile
        try:
            never_loaded = set(list_models(self.repository)) - set(entries)
        except NotFoundError:  # the repository folder itself vanished: what is loaded serves
            never_loaded = set()
        known = [
            (name, version, state)
            for name, entry in entries.items()
            for version, state in sorted(entry.states.items())
        ]
        bare = [(name, "", VersionState("")) for name in never_loaded]
        return sorted(known + bare, key=lambda row: row[0])

    # -- changing (serialised) --

    def scan(self) -> None:
        """Load what is new or changed in the repository, unload what is gone."""
        present = set(list_models(self.repository))
        for name in sorted((present | set(self._entries)) - self._unloaded):
            self.sync(name)

    def sync(self, name: str) -> None:
        with self._sync_lock:
            self._sync(name)

    def load(self, name: str, config: ModelConfig | None = None) -> None:
        """Load or reload `name` on request (with `config` instead of its config.pbtxt);
        raise with the reason when it cannot be served."""
        if not name or name != Path(name).name or name.startswith("."):
            # A request must not reach outside the repository ("../elsewhere").
            raise InvalidArgumentError(f"model name {name!r} is not a repository folder name")
        if not (self.repository / name).is_dir():
            raise NotFoundError(
                f"failed to load {name!r}: no model folder {name!r} in the repository"
            )
        with self._sync_lock:
            self._unloaded.discard(name)
            if config is None:
                self._overrides.pop(name, None)
            else:
                self._overrides[name] = config
            self._sync(name, reload=True)
            entry = self._entries[name]
        if not entry.versions:
            raise FailedPreconditionError(f"failed to load {name!r}: {entry.reason()}")
        if entry.failed:  # the reasons say which versions serve their previous load
            raise FailedPreconditionError(f"failed to load {name!r}: {entry.reason()}")
        if "" in entry.states:  # the config: every version serves its previous load
            serving = ", ".join(map(str, sorted(entry.versions)))
            raise FailedPreconditionError(
                f"failed to load {name!r}: {entry.states[''].reason} (the previous load "
                f"serves on: version{'s' if len(entry.versions) > 1 else ''} {serving})"
            )

    def unload(self, name: str) -> None:
        with self._sync_lock:
            if name not in self._entries:
                raise NotFoundError(f"failed to unload {name!r}: unknown model {name!r}")
            self._unloaded.add(name)
            self._publish(name, _Entry(states={"": VersionState(UNAVAILABLE, "unloaded")}))
        log.info("unloaded %s", name)

    def _sync(self, name: str, reload: bool = False) -> None:
        model_dir = self.repository / name
        old = self._entries.get(name, _Entry())
        if not model_dir.is_dir():
            if old.versions:
                log.info("%s removed from the repository: unloading", name)
            self._publish(name, None)
            return
        try:
            self._inside_repository(model_dir, model_dir / CONFIG_FILENAME)
            config = self._overrides.get(name) or read_model_config(model_dir)
            check_supported(config)  # parsed is not served: refused by the field's name
            policy = config.version_policy if config.HasField("version_policy") else None
            wanted = list_versions(model_dir, policy)
            if not wanted:
                raise NotFoundError(f"no version folder such as {model_dir}/1/")
            model_file(model_dir, wanted[0], config)  # refuses a name that leaves the folder
        except ZooError as error:
            reason = self._relative(str(error))
            log.error("model %s: %s", name, reason)
            states = {str(v): VersionState(READY) for v in old.versions}
            states[""] = VersionState(UNAVAILABLE, reason)
            self._publish(name, _Entry(old.versions, old.stamps, states))
            return
        self._publish(name, self._load_versions(model_dir, config, wanted, old, reload))

    def _load_versions(
        self, model_dir: Path, config: ModelConfig, wanted: list[int], old: _Entry, reload: bool
    ) -> _Entry:
        """Load each wanted version whose files changed (every one when `reload`)."""
        versions, stamps, states, failed = {}, {}, {}, {}
        for version in wanted:
            stamp = _stamp(model_dir, version, config)
            if not reload and old.stamps.get(version) == stamp:
                versions[version], stamps[version] = old.versions[version], stamp
                states[str(version)] = VersionState(READY)
                continue
            if not reload and old.failed.get(version) == stamp:  # not retried each poll
                failed[version], states[str(version)] = stamp, old.states[str(version)]
                if version in old.versions:
                    versions[version], stamps[version] = old.versions[version], old.stamps[version]
                continue
            try:
                self._inside_repository(model_file(model_dir, version, config))
                versions[version] = self._loader(model_dir, version, _copy(config))
            except Exception as error:  # a broken model must not stop the others
                reason = self._relative(str(error))
                log.error("model %s version %d failed to load: %s", model_dir.name, version, reason)
                failed[version], states[str(version)] = stamp, VersionState(UNAVAILABLE, reason)
                if version in old.versions:  # keep serving the previous load, and say so
                    versions[version], stamps[version] = old.versions[version], old.stamps[version]
                    states[str(version)] = VersionState(
                        READY, f"serving the previous load; reloading failed: {reason}"
                    )
                continue
            stamps[version] = stamp
            states[str(version)] = VersionState(READY)
            log.info("loaded %s version %d", model_dir.name, version)
        # A version the policy no longer wants serves on until as many wanted ones are
        # ready (as in Triton): a new version that is broken, or still being copied,
        # must not take down the one that works.
        short = len(wanted) - len(versions)
        for version in sorted(set(old.versions) - set(versions), reverse=True):
            if short > 0:
                short -= 1
                versions[version], stamps[version] = old.versions[version], old.stamps[version]
                states[str(version)] = VersionState(READY, "serving until a newer version is ready")
                continue
            states[str(version)] = VersionState(UNAVAILABLE, "unloaded")
            log.info(
                "unloading %s version %d after its in-flight requests", model_dir.name, version
            )
        return _Entry(versions, stamps, states, failed)

    def _inside_repository(self, *paths: Path) -> None:
        """Refuse files that resolve outside the repository (symlinks leading out of it)."""
        root = self.repository.resolve()
        for path in paths:
            if not path.resolve().is_relative_to(root):
                raise InvalidArgumentError(
                    f"{self._relative(str(path))} leads outside the model repository"
                )

    def _relative(self, message: str) -> str:
        for prefix in self._prefixes:
            message = message.replace(prefix, "")
        return message

    def _publish(self, name: str, entry: _Entry | None) -> None:
        old = self._entries.get(name)
        if (
            entry is not None
            and old is not None
            and (entry.versions, entry.states)
            == (
                old.versions,
                old.states,
            )
        ):
            # A poll that changed nothing: no new replies, no health notices.
            self._entries[name] = entry
            return
        if entry is None:
            self._entries.pop(name, None)
        else:
            ready = [str(v) for v in sorted(entry.versions)]
            for model in entry.versions.values():
                model.metadata_reply = model.metadata_for(ready)
            self._entries[name] = entry
        self._on_change(name, entry is not None and bool(entry.versions))

    # -- polling --

    def start_polling(self, interval: float) -> None:
        self._poller = threading.Thread(
            target=self._poll, args=(interval,), name="repository-poll", daemon=True
        )
        self._poller.start()

    def _poll(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.scan()
            except ZooError as error:  # e.g. the repository folder itself vanished
                log.error("repository scan failed: %s", error)

    def stop(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join()


def _parse(version: str) -> int:
    return int(version) if is_version_name(version) else -1


def _copy(config: ModelConfig) -> ModelConfig:
    # Each version gets its own config: loading completes it from its graph.
    copy = ModelConfig()
    copy.CopyFrom(config)
    return copy
