"""Every knob of the gateway, read once at start from ``GATEWAY_*`` environment variables.

An optional env file (``config/gateway.env`` by default, or the path in ``GATEWAY_ENV_FILE``) is read
too; real environment variables win over it. The README's settings table is generated from this class
(``foundry-gateway settings --markdown``), so a field's description is its documentation.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "GATEWAY_"
DEFAULT_ENV_FILE = "config/gateway.env"

CsvList = Annotated[list[str], NoDecode]


class Listening(BaseModel):
    """Where the gateway listens."""

    host: str = Field("127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(8080, ge=0, le=65535, description="Port the gateway listens on.")
    workers: int = Field(
        1, ge=1, le=64, description="uvicorn worker processes: only with an external `openai`-kind upstream; each "
        "enforces 1/N of every concurrency limit, per-key quotas are shared through the state store (the SQLite "
        "file in `GATEWAY_STATE_DIR`, or Redis), and metrics are aggregated (docs/reliability.md).",
    )


class Fleet(BaseModel):
    """Front mode: the nodes behind this gateway."""

    nodes: CsvList = Field(
        default_factory=list, description="Front mode: comma-separated base URLs of node gateways (each a gateway "
        "beside its own Foundry Local). A name with several addresses (a Kubernetes headless Service) is several "
        "nodes. Empty: this gateway is a node (or stands alone).",
    )
    node_poll_interval: float = Field(1.0, gt=0, description="Front mode: seconds between status polls of each node.")
    node_eject_after: int = Field(
        3, ge=1, description="Front mode: consecutive failures of requests on a node (timeouts, 5xx, bad answers, "
        "stalls mid-stream) that eject it, as Envoy's outlier detection does; a refused connection ejects at once.",
    )
    node_eject_seconds: float = Field(
        30.0, gt=0, description="Front mode: how long an outlier stays ejected before a good status poll may "
        "re-admit it; each ejection in a row doubles it (up to 8x).",
    )
    node_resolve_interval: float = Field(
        10.0, gt=0, description="Front mode: seconds between re-resolving the node names (nodes joining, leaving).",
    )


class UpstreamSettings(BaseModel):
    """The runtime behind a node: managed or external, and how it is reached."""

    upstream_mode: Literal["managed", "external"] = Field(
        "managed",
        description="`managed`: start Foundry Local in a supervised child process; "
        "`external`: use a running service at `upstream_url`.",
    )
    upstream_kind: Literal["foundry", "openai"] = Field(
        "foundry",
        description="`foundry`: Foundry Local (catalog prefix, load/unload, no /v1/completions); "
        "`openai`: any plain OpenAI-compatible server.",
    )
    upstream_url: str | None = Field(
        None,
        description="Base URL of an external upstream (no `/v1`), `http://` or `https://`. Unset in external "
        "mode: discovered with `foundry server status` (or the older `foundry service status`).",
    )
    upstream_api_key: str | None = Field(None, description="Bearer key sent to the upstream, if it wants one.")
    upstream_ca_bundle: Path | None = Field(
        None, description="PEM file of CA certificates trusted for an `https://` upstream, on top of the system "
        "store (which `SSL_CERT_FILE` also extends).",
    )
    upstream_transport: Literal["fast", "httpx", "aiohttp"] = Field(
        "fast", description="HTTP client under httpx for the upstream: `fast` (this project's, measured cheapest), "
        "`httpx` (httpx's own pool) or `aiohttp` (needs the extra: `pip install 'foundry-gateway[aiohttp]'`). For "
        "comparisons and as an escape hatch.",
    )
    upstream_tcp_tuning: bool = Field(
        True, description="Linux: `TCP_QUICKACK` re-armed after every read and `TCP_NODELAY` on upstream "
        "connections, so a runtime writing small segments with Nagle on does not stall each first token ~40 ms.",
    )
    upstream_fresh_connections: bool | None = Field(
        None, description="A new upstream connection per request instead of keep-alive. Unset: only where "
        "`TCP_QUICKACK` does not exist (macOS, Windows) and the upstream is on this host — a loopback connect costs "
        "less than the ~40 ms delayed-ACK stall a reused connection pays (docs/performance.md).",
    )
    loop: Literal["auto", "asyncio", "uvloop"] = Field(
        "auto", description="Event loop: `auto` picks uvloop where it is installed (not on Windows), else asyncio's.",
    )
    upstream_tls_verify: bool = Field(
        True, description="Check the `https://` upstream's certificate. `false` only in a lab: it warns loudly.",
    )
    foundry_catalog_prefix: str = Field(
        "/catalogs/local", description="Path prefix of Foundry Local's local catalog routes."
    )
    foundry_cache_dir: Path = Field(
        Path(".run/foundry"), description="Managed mode: Foundry Local's model cache and registrations."
    )
    foundry_start_timeout: float = Field(
        60.0, gt=0, description="Managed mode: seconds to wait for the runtime to be ready (at start and after a "
        "crash; requests wait as long for a restarting runtime).",
    )
    foundry_runner_prefix: str = Field(
        "", description="Managed mode: command words put before the runtime's command, e.g. `taskset -c 1` or "
        "`nice -n 5` (shell-style quoting).",
    )

    @field_validator("upstream_url")
    @classmethod
    def _upstream_scheme(cls, value: str | None) -> str | None:
        if value is not None:
            check_upstream_url(value)
        return value

    @field_validator("upstream_ca_bundle")
    @classmethod
    def _ca_bundle_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value


class Routing(BaseModel):
    """The registry, routing, and the models on this host."""

    registry_path: Path = Field(Path("models.json"), description="The model registry file.")
    registry_watch_interval: float = Field(
        2.0, ge=0, description="Seconds between checks of the registry file for changes (0 = off)."
    )
    task_header: str = Field("X-Task", description="Request header that names the task.")
    default_task: str = Field("chat", description="Task used when a request names neither task nor model.")
    rank_by: Literal["order", "rating", "latency"] = Field(
        "order", description="How `auto` ranks the models that fit: `order` (the registry's), `rating` (the "
        "team's mean rating for the task, from `measured`), `latency` (measured p50); unmeasured models come after "
        "measured ones.",
    )
    host_ram_gb: float | None = Field(
        None, ge=0, description="Override the host's RAM in GiB (when the upstream runs elsewhere)."
    )
    ram_reserve_gb: float = Field(1.0, ge=0, description="GiB kept free for the OS and the gateway itself.")
    default_max_tokens: int = Field(
        512, ge=1, description="`max_tokens` added when a request has none (Foundry Local rejects those)."
    )
    inventory_refresh_interval: float = Field(
        15.0, gt=0, description="Seconds between refreshes of what the upstream has and has loaded."
    )
    load_timeout: float = Field(300.0, gt=0, description="Seconds a model load may take.")
    idle_unload_after: float = Field(
        0.0, ge=0, description="Unload a model idle for this many seconds (0 = never; registry `pinned` models stay)."
    )
    preload: CsvList = Field(
        default_factory=list, description="Models to load before `/readyz` turns ready: registry names, or "
        "`all-fitting` (every available model, in registry order, while they fit the RAM budget together). A "
        "failed preload is logged and reported in `/readyz`, not fatal.",
    )

    @field_validator("task_header")
    @classmethod
    def _header_name(cls, value: str) -> str:
        if not value or any(c.isspace() or c == ":" for c in value):
            raise ValueError("must be a valid HTTP header name")
        return value


class State(BaseModel):
    """What the gateway remembers: stored responses, quota counters, files and batches (docs/state.md)."""

    state_dir: Path = Field(
        Path(".run/state"), description="Where the gateway keeps what it must remember (stored responses, quota "
        "counters, files, batches) in one SQLite file and a `files/` folder, shared by the workers of this host. "
        "With `GATEWAY_REDIS_URL` set, Redis holds the records instead (replicas and fronts share them); files stay "
        "on this disk.",
    )
    state_min_free_bytes: int = Field(
        64 * 1024 * 1024, ge=0, description="Free space the state directory's disk keeps: below it uploads, "
        "stored responses and new batches are refused with 507 `insufficient_storage` (before anything is "
        "written), and `/readyz` and `gateway_state_full` say so.",
    )
    responses_ttl: float = Field(
        30 * 86400.0, gt=0, description="Seconds a stored response (`store`, OpenAI's default) is kept for "
        "`previous_response_id` and `GET /v1/responses/{id}`; a conversation's earlier turns live as long as its "
        "latest.",
    )
    responses_max_bytes: int = Field(
        256 * 1024 * 1024, ge=1024, description="Bound on each key's stored responses (compressed; a key's "
        "`storage_bytes` in the keys file overrides it): past it the key's own responses that would expire soonest "
        "go first — never another key's.",
    )
    usage: bool = Field(
        True, description="Record each request's usage (key, model, endpoint, task; tokens, runtime seconds, cost) "
        "in the state store, for `GET /v1/usage`, `foundry-gateway usage`, the console's Usage view and the keys' "
        "budgets (`max_cost_per_day`, `max_tokens_per_month`: not enforced when off). Written in batches twice a "
        "second, off the request path.",
    )
    usage_retention_days: int = Field(
        90, ge=1, le=3660, description="Days usage is kept, in daily buckets; hourly buckets are kept 31 days (at "
        "most this), minute buckets one day.",
    )
    sweep_interval: float = Field(
        300.0, gt=0, description="Seconds between sweeps of what expired: records and their index entries, "
        "files whose record went, temporary files of uploads a crash cut off (also once at start).",
    )

class Cache(BaseModel):
    """Answers kept for requests that come again, and identical requests joined while they run."""

    cache: Literal["off", "deterministic", "all"] = Field(
        "deterministic", description="What the response cache keeps: `deterministic` — answers meant to repeat "
        "(`temperature` 0, a `seed`, embeddings); `all` — every successful answer; `off`. Identical requests that "
        "arrive while the first is generating share its generation (coalescing) under the same rule.",
    )
    cache_scope: Literal["key", "shared"] = Field(
        "key", description="`key`: each team key has its own cached answers; `shared`: one cache for all callers.",
    )
    cache_ttl: float = Field(3600.0, gt=0, description="Seconds a cached answer is kept.")
    cache_max_bytes: int = Field(
        64 * 1024 * 1024, ge=0, description="Bound on the cached answers held in this process (the least recently "
        "used go first); with `GATEWAY_REDIS_URL`, on those held in Redis (compressed).",
    )
    cache_charge: Literal["none", "full"] = Field(
        "none", description="Quotas for answers from the cache (hits, and requests joined to another's "
        "generation): `none` — free; `full` — admitted and charged as if generated.",
    )
    cache_semantic: float = Field(
        0.0, ge=0, le=1, description="Opt-in semantic cache: a `deterministic`-eligible chat request whose last user "
        "message is this close (cosine, e.g. 0.95) to a cached one for the same model and system prompt gets that "
        "answer, compared with the registry's embedding model. 0 = off. Near-duplicates are not duplicates.",
    )


class Batches(BaseModel):
    """The Batch API: files of requests run in the capacity interactive traffic leaves."""

    max_file_bytes: int = Field(
        200 * 1024 * 1024, ge=1024, description="Largest file `POST /v1/files` takes (a batch's input); the "
        "output and error files the gateway writes for a batch are not bound by it.",
    )
    files_ttl: float = Field(
        30 * 86400.0, gt=0, description="Seconds a file is kept when its upload names no `expires_after` (a "
        "batch's output and error files: unless the batch named `output_expires_after`).",
    )
    batches_ttl: float = Field(
        30 * 86400.0, gt=0, description="Seconds a batch's record is kept after its last change (it ended).",
    )
    batch_max_lines: int = Field(50_000, ge=1, description="Most requests in one batch's input file.")
    batch_max_concurrency: int = Field(
        8, ge=1, description="Most lines of a batch in flight at once, reached only while no interactive request "
        "runs (with interactive traffic: one, or none while it is in flight).",
    )


class Timeouts(BaseModel):
    """How long each phase of a request may take."""

    connect_timeout: float = Field(5.0, gt=0, description="Seconds to connect to the upstream.")
    upstream_keepalive: float = Field(
        30.0, gt=0, description="Seconds an idle upstream connection is kept for reuse."
    )
    first_byte_timeout: float = Field(
        120.0, gt=0, description="Seconds to wait for the upstream's first byte (prompt processing)."
    )
    idle_timeout: float = Field(60.0, gt=0, description="Longest gap between two chunks of a stream.")
    total_timeout: float = Field(900.0, gt=0, description="Longest a whole request may take.")
    header_timeout: float = Field(
        10.0, gt=0, description="Seconds a connection may take to send a request's headers (a client that "
        "trickles them is closed).",
    )
    body_timeout: float = Field(
        30.0, gt=0, description="Longest wait for the next piece of a request body (an upload that stalls is a 408).",
    )
    keepalive_interval: float = Field(
        10.0, gt=0, description="While a stream waits for its first token, send `: keep-alive` this often."
    )


class Resilience(BaseModel):
    """Limits, queues, scheduling and the circuit breaker."""

    max_in_flight: int = Field(256, ge=1, description="Requests in flight across all models.")
    model_concurrency: int = Field(
        2, ge=1, description="Requests in flight per model when `GATEWAY_ADAPTIVE_CONCURRENCY=false` (others "
        "wait in the queue). A registry `max_concurrency` fixes one model's limit either way.",
    )
    adaptive_concurrency: bool = Field(
        True, description="Find each model's concurrency limit by measuring its throughput (climb while it grows, "
        "back off when it does not); `false`: the static `GATEWAY_MODEL_CONCURRENCY`.",
    )
    concurrency_min: int = Field(1, ge=1, description="Adaptive concurrency: the lowest limit per model.")
    concurrency_max: int = Field(32, ge=1, description="Adaptive concurrency: the highest limit per model.")
    concurrency_initial: int = Field(2, ge=1, description="Adaptive concurrency: the limit a model starts at.")
    queue_size: int = Field(64, ge=0, description="Requests that may wait per model before 429.")
    queue_timeout: float = Field(
        30.0, gt=0, description="Seconds a request may wait in a queue before 429; a request whose expected "
        "wait is longer gets the 429 at once.",
    )
    swap_hold: float = Field(
        15.0, ge=0, description="Models that cannot all be loaded at once: requests are grouped by model, and a "
        "running model keeps taking its own new requests for this many seconds after another model's requests "
        "start waiting (0 = plain alternation, one swap per turn).",
    )
    batch_aging: float = Field(
        10.0, ge=0, description="`X-Priority: batch` requests yield to interactive ones, but only to those that "
        "arrived less than this many seconds after them (so batch work never starves).",
    )
    breaker_failures: int = Field(3, ge=1, description="Consecutive failures that cool a model down.")
    breaker_cooldown: float = Field(30.0, gt=0, description="Seconds a failing model is skipped.")
    shutdown_grace: float = Field(20.0, ge=0, description="Seconds in-flight requests get on SIGTERM.")


class AccessControl(BaseModel):
    """Keys, quotas, and the sizes a request may have."""

    api_keys: CsvList = Field(default_factory=list, description="Comma-separated API keys (empty = open).")
    api_keys_file: Path | None = Field(None, description="File with one API key per line.")
    keys_file: Path | None = Field(
        None, description="Team keys with model allow-lists and quotas (JSON or YAML; see README \"Keys for "
        "teams\"); reloaded when it changes, a broken file keeps the last good keys.",
    )
    redis_url: str | None = Field(
        None, description="Redis for the state every replica and front shares — quota counters and reservations, "
        "stored responses (`redis://host:6379/0`); unset: the SQLite file in `GATEWAY_STATE_DIR`.",
    )
    quota_fail_open: bool = Field(
        True, description="The state store unreachable (Redis down): let requests through (true, logged and "
        "counted) or refuse them with 503 (false).",
    )
    metrics_api_key: str | None = Field(None, description="Bearer key required for `/metrics` (unset = open).")
    admin_api_key: str | None = Field(None, description="Bearer key for `/admin/*` (unset = admin disabled).")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body (413 above).")
    max_audio_bytes: int = Field(
        25 * 1024 * 1024, ge=1024, description="Largest audio upload to `/v1/audio/transcriptions` (413 above).",
    )
    max_header_bytes: int = Field(
        64 * 1024, ge=1024, description="Largest total size of request headers (431 above)."
    )
    max_unauthenticated_connections: int = Field(
        256, ge=1, description="Connections that have not yet sent a request with a valid key (still sending "
        "headers, or idle) a worker keeps: past it the oldest of them is closed, so slow or idle sockets cannot "
        "crowd out real clients; at most a quarter of the process's open-file limit.",
    )
    cors_origins: CsvList = Field(default_factory=list, description="Comma-separated CORS origins (empty = off).")

    @cached_property
    def all_api_keys(self) -> tuple[str, ...]:
        """Keys from the setting and the keys file, read once."""
        keys = list(self.api_keys)
        if self.api_keys_file is not None:
            for line in self.api_keys_file.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    keys.append(line)
        return tuple(keys)


class Observability(BaseModel):
    """Logs and metrics."""

    log_level: str = Field("info", description="Log level of the gateway's own logger.")
    access_log: bool = Field(True, description="One JSON line per request on stderr.")
    log_prompts: bool = Field(False, description="Include prompt and completion text in access logs.")
    metrics_dir: Path | None = Field(
        None, description="prometheus-client multiprocess directory (set automatically when workers > 1)."
    )


class Settings(Observability, AccessControl, Resilience, Timeouts, Batches, Cache, State, Routing,
               UpstreamSettings, Fleet, Listening, BaseSettings):
    """Gateway configuration, read once at start; field descriptions double as the README's settings table. The
    groups are listed last to first: pydantic collects fields from the bases in reverse, so the table reads in
    the order the groups are defined above."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=os.environ.get(f"{ENV_PREFIX}ENV_FILE", DEFAULT_ENV_FILE),
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    @field_validator("api_keys", "cors_origins", "preload", "nodes", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value


def check_upstream_url(url: str) -> None:
    """An upstream URL must be http:// or https:// with a host; anything else is a start-up error."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest.strip("/"):
        raise ValueError(f"must be an http:// or https:// URL, got {url!r}")


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (CLI flags, tests) on top."""
    return Settings(**overrides)  # type: ignore[arg-type]
