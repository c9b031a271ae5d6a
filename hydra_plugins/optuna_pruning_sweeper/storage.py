"""Where a study lives: `hydra.sweeper.storage` as a URL, a `_target_` config, or null.

- null: SQLite in the sweep directory (`<sweep dir>/optuna.db`);
- a URL: Optuna's RDBStorage (`sqlite:///multirun/optuna.db`, `postgresql+psycopg://user@host/db`, ...),
  relative SQLite paths taken from the directory the sweep was started in;
- a config: a class under optuna.storages, e.g. RDBStorage with engine options, or JournalStorage with a
  JournalFileBackend (a journal file on a shared filesystem) or a JournalRedisBackend.

The sweeper and each of its jobs open the storage from this same config (the job through its own Hydra
config), so nothing about the storage reaches a job through a file Hydra writes: a password given as
`${oc.env:VAR}` stays an interpolation in every `.hydra/` file, and the sweep's logs and result files
show URLs with the password masked (`describe`).
"""

import contextlib
import gc
import json
import os
import random
import time
import traceback
import types
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.trial import FrozenTrial
from sqlalchemy.engine import make_url

STORAGE_PACKAGE = "optuna.storages."
STORAGE_WHITELIST = (f"{STORAGE_PACKAGE}*",)
IN_MEMORY = f"{STORAGE_PACKAGE}InMemoryStorage"  # a study no job could reach
SQLITE_PREFIX = "sqlite:///"
DEFAULT_DATABASE = "optuna.db"
JOURNAL_PREFIX = "journal file "  # how describe() names a journal file storage (compare reads it back)
# Workers that start together create the tables and the study at the same instant: those races end in
# one of these errors for all but one of them (SQLite: locked, UNIQUE constraint; PostgreSQL: relation
# already exists, duplicate key), and opening again succeeds.
RACE_MESSAGES = ("locked", "already exists", "duplicate", "unique constraint", "deadlock")
OPEN_ATTEMPTS = 12
# The RDB storages this process opened: a child forked from it (hydra/launcher=batched with processes > 1)
# opens connections of its own (see _own_connections_in_forked_child).
_opened_rdb: "weakref.WeakSet[RDBStorage]" = weakref.WeakSet()


def _own_connections_in_forked_child() -> None:
    """SQLAlchemy's rule for an engine that crosses a fork: the child drops the pool it inherited without
    closing its connections (they are the parent's) and opens its own when it needs one."""
    for storage in list(_opened_rdb):
        storage.engine.dispose(close=False)


os.register_at_fork(after_in_child=_own_connections_in_forked_child)


def database_of(storage: BaseStorage) -> RDBStorage | None:
    """The RDBStorage a storage is, or that Optuna's cache in front of it (_CachedStorage) holds; None for
    any other storage (a JournalStorage's _backend is its file, not a database)."""
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, RDBStorage) else None


def release_interrupted_access(stop: BaseException, storage: BaseStorage | None) -> None:
    """Call after Ctrl-C, or any exception, stopped this process in the middle of a database access, before
    it writes to the study (in `storage`, if it is given) again.

    - A stopped read's cursor stays alive in the locals of the frames its traceback keeps, and an open
      SQLite statement holds the database's shared lock. A write on another connection of the same process
      then waits for that lock, up to the 60 s busy timeout, for each write, and a write of another process
      waits until this process ends. So every open result in those frames is closed, and then the finished
      frames are cleared (the traceback still names every line). Clearing alone left one: on Python 3.11 a
      comprehension's frame keeps its function, whose closure holds the result (SQLAlchemy's
      `loading.instances` reads rows in one). A Ctrl-C there left a joblib worker holding the lock after its
      job had ended, and the sweep, telling its trials, hung until the worker was killed.
    - Optuna's RDBStorage gives each thread one SQLAlchemy session, closed after each access and used again
      for the next. A Ctrl-C inside that close left it unusable ("this identity map is no longer valid"): the
      run's own status failed to reach the study, and that error replaced the Ctrl-C (1 of 16 Ctrl-Cs on
      the basic launcher, the sweep then ran on). This thread's session is dropped: the next access opens a
      new one.
    """
    for frame, _ in traceback.walk_tb(stop.__traceback__):
        # A finished frame's values, without frame.f_locals: its snapshot of them would outlive clear()
        for value in gc.get_referents(frame):
            if isinstance(value, types.CellType):
                try:
                    value = value.cell_contents
                except ValueError:  # an empty cell
                    continue
            if isinstance(value, sqlalchemy.engine.CursorResult):
                value.close()
    traceback.clear_frames(stop.__traceback__)
    if (backend := database_of(storage)) is not None:
        with contextlib.suppress(Exception):  # (it may be as broken as above)
            backend.scoped_session.remove()
        backend.scoped_session.registry.clear()


def set_trial_attrs(
    storage: BaseStorage, trial_id: int, user: dict[str, Any], system: dict[str, Any] | None = None
) -> None:
    """A trial's user (and system) attributes, as set_trial_user_attr and set_trial_system_attr set them one
    by one, in one transaction when the study is in a database: one commit instead of one per key (half
    the time on SQLite; a round trip each saved on a server). Other storages: one call per key.

    RDBStorage's own write for one attribute (a private method, the one its public setters call in a
    transaction of their own) looks the trial up and upserts the key, two statements per key. On SQLite and
    PostgreSQL the same is done in two statements per trial (attrs_upserted: the trial looked up and checked
    as that method does, then one upsert of all the keys of each kind: 2 ms instead of 3.2 for a run's six);
    on other databases through that method, key by key. So the same checks apply: a finished trial raises
    UpdateFinishedTrialError and nothing is written. An Optuna without the method gets the public calls.
    Unlike Trial.set_user_attr, it leaves an optuna.Trial object's own copy (trial.user_attrs) as it was:
    read them from the study."""
    system = system or {}
    backend = database_of(storage)
    write = getattr(backend, "_set_trial_attr_without_commit", None)
    if backend is not None and write is not None:
        from optuna.storages._rdb import models  # loaded by the RDBStorage already
        from optuna.storages._rdb import storage as rdb

        with rdb._create_scoped_session(backend.scoped_session, True) as session:
            kinds = ((models.TrialUserAttributeModel, user), (models.TrialSystemAttributeModel, system))
            if backend.engine.name in UPSERTING_DIALECTS:
                trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
                backend.check_trial_is_updatable(trial_id, trial.state)
                for model, attrs in kinds:
                    if attrs:
                        session.execute(attrs_upserted(backend.engine.name, model, trial_id, attrs))
                return
            for model, attrs in kinds:
                for key, value in attrs.items():
                    write(session, model, trial_id, key, value)
        return
    for key, value in user.items():
        storage.set_trial_user_attr(trial_id, key, value)
    for key, value in system.items():
        storage.set_trial_system_attr(trial_id, key, value)


def stored_user_attrs(storage: BaseStorage, trial_id: int) -> dict[str, Any]:
    """A trial's user attributes as stored now, including those its job set in another process: on a
    database one query, where Optuna's cache in front of it would load the whole running trial."""
    database = database_of(storage)
    return (storage if database is None else database).get_trial_user_attrs(trial_id)


UPSERTING_DIALECTS = ("sqlite", "postgresql")


def attrs_upserted(dialect: str, model: type, trial_id: int, attrs: dict[str, Any]) -> Any:
    """One INSERT ... ON CONFLICT (trial_id, key) DO UPDATE of a trial's attributes of one kind (a model of
    optuna.storages._rdb.models), each value stored as JSON, as RDBStorage stores it."""
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    rows = [
        {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)} for key, value in attrs.items()
    ]
    statement = insert(model).values(rows)
    return statement.on_conflict_do_update(
        index_elements=[model.trial_id, model.key], set_={"value_json": statement.excluded.value_json}
    )


def report_together(reports: list[tuple[optuna.Trial, float, int]]) -> bool:
    """Trial.report(value, step) for each (trial, value, step), trials of one storage, in one transaction
    when the study is in a database: one commit instead of one per trial (a stacked epoch of 20 trials on
    SQLite: 17 ms instead of 40 to 100 ms; on a server, a round trip or more per trial saved). All or
    nothing: False when the transaction failed (a trial finished meanwhile) or the storage is no database,
    and nothing was written; each trial then reports on its own (Trial.report), which raises for the
    trial at fault only. Each optuna.Trial's own copy gets the value too, as Trial.report gives it: its
    should_prune() hands the pruner that copy, not the stored trial."""
    storages = {id(trial.storage): trial.storage for trial, _, _ in reports}
    own_copies = [getattr(trial, "_cached_frozen_trial", None) for trial, _, _ in reports]
    if len(storages) != 1 or not all(isinstance(own, FrozenTrial) for own in own_copies):
        return False
    backend = database_of(reports[0][0].storage)
    write = getattr(backend, "_set_trial_intermediate_value_without_commit", None)
    if backend is None or write is None:
        return False
    from optuna.storages._rdb import storage as rdb

    try:
        with rdb._create_scoped_session(backend.scoped_session) as session:
            for trial, value, step in reports:
                write(session, trial._trial_id, step, float(value))
    except Exception:  # rolled back
        return False
    for (_, value, step), own in zip(reports, own_copies, strict=True):
        own.intermediate_values[step] = float(value)
    return True


class StorageError(Exception):
    """A storage that cannot be opened; the message names it (password masked) and the cause."""


class StorageSettingError(StorageError):
    """hydra.sweeper.storage is not a value a storage can be made from."""


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return url


def sqlite_url(url: str, cwd: Path) -> str:
    """An SQLite URL with an absolute path (relative ones are taken from `cwd`) whose directory exists."""
    if not url.startswith(SQLITE_PREFIX) or url == f"{SQLITE_PREFIX}:memory:":
        return url
    path = cwd / url[len(SQLITE_PREFIX) :]
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"{SQLITE_PREFIX}{path.resolve()}"


def storage_url_or_config(spec: Any, sweep_dir: Callable[[], Path], cwd: Path) -> str | DictConfig:
    """hydra.sweeper.storage with its default applied and relative SQLite paths made absolute."""
    if spec is None:
        return sqlite_url(f"{SQLITE_PREFIX}{Path(sweep_dir(), DEFAULT_DATABASE)}", cwd)
    if isinstance(spec, str):
        return sqlite_url(spec, cwd)
    if isinstance(spec, DictConfig) and "_target_" in spec:
        for target in targets(spec):
            if not target.startswith(STORAGE_PACKAGE):
                allowed = f"a class under {STORAGE_PACKAGE}*"
                raise StorageSettingError(
                    f"hydra.sweeper.storage: _target_ {target!r} is not allowed: {allowed}"
                )
        if str(spec._target_) == IN_MEMORY:
            raise StorageSettingError(
                f"hydra.sweeper.storage: _target_ {IN_MEMORY!r} is not allowed: each job opens the study "
                "itself, so it must be one that outlives a process (null, a URL, or a JournalStorage)"
            )
        return spec
    raise StorageSettingError(
        f"hydra.sweeper.storage={spec!r} is not allowed: null, a storage URL or a config with a _target_ "
        "under optuna.storages"
    )


def targets(node: Any) -> list[str]:
    """Every _target_ in a config, nested ones included."""
    if isinstance(node, DictConfig):
        own = [str(node["_target_"])] if "_target_" in node else []
        return own + [
            t for key, value in node.items_ex(resolve=False) if key != "_target_" for t in targets(value)
        ]
    if isinstance(node, ListConfig):
        return [t for value in node for t in targets(value)]
    return []


def is_race(error: Exception) -> bool:
    message = str(error).lower()
    return isinstance(error, sqlalchemy.exc.IntegrityError) or any(m in message for m in RACE_MESSAGES)


def with_retries(open_once: Any, what: str) -> Any:
    """open_once(), again after a short random pause when it lost a creation race to another worker."""
    for attempt in range(OPEN_ATTEMPTS):
        try:
            with warnings.catch_warnings():  # heartbeats are experimental in Optuna, used here on purpose
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return open_once()
        except sqlalchemy.exc.DBAPIError as error:  # PostgreSQL's DuplicateTable is a ProgrammingError
            if not is_race(error) or attempt == OPEN_ATTEMPTS - 1:
                raise StorageError(f"cannot open the Optuna storage {what}: {one_line(error)}") from error
            time.sleep(random.uniform(0.05, 0.3) * (attempt + 1))
        except Exception as error:  # not a database, a file that cannot be read, a refused config...
            raise StorageError(f"cannot open the Optuna storage {what}: {one_line(error)}") from error
    raise AssertionError("unreachable")


def one_line(error: BaseException) -> str:
    """An error's first line, without SQLAlchemy's statement and background links."""
    original = getattr(error, "orig", None) or error
    return str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__


def engine_defaults(url: str, grace_period: int | None) -> dict[str, Any]:
    """SQLAlchemy engine options for a study that several workers share.

    SQLite: wait up to 60 s for another worker's write lock (instead of 5 s). PostgreSQL: check a pooled
    connection before using it, and let the server end a session that stays inside a transaction for
    longer than the grace period: a hung or lost worker must not hold its trial's rows locked, which
    would stop every other worker at the row (its transactions otherwise last milliseconds).
    """
    if url.startswith(SQLITE_PREFIX):
        return {"connect_args": {"timeout": 60}}
    if url.startswith("postgresql"):
        options = {"pool_pre_ping": True}
        if grace_period:
            timeout = f"-c idle_in_transaction_session_timeout={grace_period * 1000}"
            options["connect_args"] = {"options": timeout}
        return options
    return {}


def open_storage(
    spec: Any,
    *,
    sweep_dir: Callable[[], Path],
    cwd: Path,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    schema_ready: bool = False,
) -> BaseStorage:
    """The storage named by hydra.sweeper.storage (`sweep_dir()`: where a null storage puts its database).
    RDB storages get Optuna's heartbeat settings and engine_defaults (unless their config sets its own);
    the caller records the heartbeats. `schema_ready`: a job's, opened after its sweeper opened the same
    database, which made Optuna's tables and checked their schema version (SCHEMA_READY)."""
    storage = _open(
        storage_url_or_config(spec, sweep_dir, cwd),
        heartbeat_interval,
        grace_period,
        SCHEMA_READY if schema_ready else {},
    )
    if isinstance(storage, RDBStorage):
        _opened_rdb.add(storage)
    return storage


# RDBStorage's options for a database whose tables its sweeper made and checked: no table creation, and no
# check of the schema against Optuna's migrations (which reads alembic's scripts): 20 to 60 ms per process
SCHEMA_READY = {"skip_compatibility_check": True, "skip_table_creation": True}


# RDBStorage's options for a database its open creates: Optuna stamps it with this Optuna's schema version,
# which its check would then read back from alembic's scripts (50 ms of a sweep's start)
NEW_DATABASE = {"skip_compatibility_check": True}


def is_new_sqlite_file(url: str) -> bool:
    """An SQLite URL whose database file does not exist yet: opening it creates it."""
    if not url.startswith(SQLITE_PREFIX):
        return False
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return False
    database = parsed.database
    if not database or database == ":memory:" or parsed.query:  # `?uri=true`: a name that is no path
        return False
    return not Path(database).exists()


class VersionManagerOnDemand:
    """Optuna's _VersionManager of an RDBStorage, made when the storage first asks it something (its schema
    version, an upgrade). Made at once, it records the schema's version in a new database (alembic's
    version table), which its sweeper did before; for that it imports alembic, 65 ms of a job's process."""

    def __init__(self, make: Callable[..., Any], arguments: tuple[Any, ...]) -> None:
        self._make = make
        self._arguments = arguments
        self._manager: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._manager is None:
            self._manager = self._make(*self._arguments)
        return getattr(self._manager, name)


def _init_with_version_manager_on_demand() -> Callable[..., None] | None:
    """RDBStorage.__init__, Optuna's own code, run with VersionManagerOnDemand in place of _VersionManager
    (the same function over a copy of its module's names); None if this Optuna's has no _VersionManager."""
    init = RDBStorage.__init__
    names = dict(init.__globals__)
    version_manager = names.get("_VersionManager")
    if not isinstance(version_manager, type):
        return None
    names["_VersionManager"] = lambda *arguments: VersionManagerOnDemand(version_manager, arguments)
    function = types.FunctionType(init.__code__, names, init.__name__, init.__defaults__, init.__closure__)
    function.__kwdefaults__ = init.__kwdefaults__
    return function


class SetUpRDBStorage(RDBStorage):
    """An RDBStorage for a database whose sweeper made its tables and checked their version (open with
    SCHEMA_READY): also its version manager made on demand (VersionManagerOnDemand), so that a job's
    process never imports alembic."""

    __init__ = _init_with_version_manager_on_demand() or RDBStorage.__init__


def _open(
    spec: str | DictConfig,
    heartbeat_interval: int | None,
    grace_period: int | None,
    rdb_options: dict[str, bool],
) -> BaseStorage:
    heartbeat = {"heartbeat_interval": heartbeat_interval, "grace_period": grace_period}
    if isinstance(spec, str):
        engine_kwargs = engine_defaults(spec, grace_period)
        kind = SetUpRDBStorage if rdb_options == SCHEMA_READY else RDBStorage
        if not rdb_options and is_new_sqlite_file(spec):
            rdb_options = NEW_DATABASE
        return with_retries(
            lambda: kind(spec, engine_kwargs=engine_kwargs, **heartbeat, **rdb_options), mask_url(spec)
        )
    target = str(spec._target_)
    if target.endswith("RDBStorage"):
        overrides = {k: v for k, v in {**heartbeat, **rdb_options}.items() if spec.get(k) is None}
        if spec.get("engine_kwargs") is None:
            overrides["engine_kwargs"] = engine_defaults(str(spec.get("url")), grace_period)
        return with_retries(
            lambda: instantiate(spec, **overrides, _execution_whitelist_=STORAGE_WHITELIST),
            mask_url(str(spec.get("url"))),
        )
    return with_retries(lambda: instantiate(spec, _execution_whitelist_=STORAGE_WHITELIST), target)


def describe(storage: BaseStorage) -> str:
    """The storage for logs and result files: a URL with its password masked, or the journal's file."""
    if isinstance(storage, optuna.storages._CachedStorage):
        storage = storage._backend
    if isinstance(storage, RDBStorage):
        return mask_url(storage.url)
    if isinstance(storage, JournalStorage):
        backend = storage._backend
        path = getattr(backend, "_file_path", None)
        return f"{JOURNAL_PREFIX}{path}" if path else f"journal {type(backend).__name__}"
    return type(storage).__name__
