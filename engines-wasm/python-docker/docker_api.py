"""The Docker Engine API as plain data: settings, paths, request bodies and the parsing
of responses.

Nothing here touches WASI, so this module runs unchanged on the build machine's CPython:
`python3 -m unittest` in this directory tests it (build.sh does so before building).
It mirrors `engines-wasm/docker-api/src/api.rs`, the reference translation; keep the two
in step.
"""

import json
import math
from urllib.parse import quote

# What Debian's dockerd 20.10 and Podman's compat API both serve.
DEFAULT_API_VERSION = "1.41"

# The labels the keep rule reads (see `agent-start` in wit/engine.wit).
PLUGIN_LABEL = "drp.plugin"
SPEC_LABEL = "drp.spec"

# Docker answers `POST /images/load` with a stream of JSON messages; `quiet=1` leaves
# out the progress bars, so what remains is small.
IMAGE_LOAD_PATH = "/images/load?quiet=1"


class SettingsError(Exception):
    """A setting is missing or wrong; the engine turns it into `bad-config`."""


# --- settings -----------------------------------------------------------------------


def json_kind(value):
    """How a JSON value is named in messages ("a number", "an array", ...)."""
    # bool before int: in Python True is an int.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


class Config:
    """What the engine derives from its settings: where the daemon is."""

    def __init__(self, base_url, api_version):
        # `http://host:port` (or https, possibly with a path prefix), no trailing `/`.
        self.base_url = base_url
        # `1.41`, without a leading `v`.
        self.api_version = api_version

    def url(self, path):
        """The URL of API path `path` (which starts with `/`)."""
        return f"{self.base_url}/v{self.api_version}{path}"

    def __eq__(self, other):
        return (self.base_url, self.api_version) == (other.base_url, other.api_version)

    def __repr__(self):
        return f"Config({self.base_url!r}, {self.api_version!r})"


def parse_settings(engine, settings_json):
    """Parses the engine's entry of `context-engines/engine-config` into a `Config`.

    An empty string counts as `{}`; anything but a JSON object is refused. Keys:
    `base-url` (required), `api-version` (default 1.41). `allowed-hosts` and
    `request-timeout-secs` belong to the host, which enforces them; they are not read
    here. Other keys are ignored, as the contract asks, so a later host may add its own.
    """
    if settings_json.strip():
        try:
            settings = json.loads(settings_json)
        except ValueError as e:
            raise SettingsError(f"{engine} settings: not valid JSON: {e}") from None
        if not isinstance(settings, dict):
            raise SettingsError(f"{engine} settings: expected a JSON object, got {json_kind(settings)}")
    else:
        settings = {}

    def error(key, problem):
        return SettingsError(f"{engine} settings: `{key}` {problem}")

    example = '"http://127.0.0.1:2375"'
    raw = settings.get("base-url")
    if raw is None:  # absent, or JSON null
        raise error("base-url", f"is missing (e.g. {example})")
    if not isinstance(raw, str):
        raise error("base-url", f"must be a string, got {json_kind(raw)}")
    if not raw.strip():
        raise error("base-url", f"is empty (e.g. {example})")
    try:
        base_url = normalize_base_url(raw.strip())
    except ValueError as e:
        raise error("base-url", str(e)) from None

    version = settings.get("api-version")
    if version is None:
        api_version = DEFAULT_API_VERSION
    elif isinstance(version, str):
        api_version = version.strip().lstrip("vV")
    elif isinstance(version, (int, float)) and not isinstance(version, bool):
        # JSON 1.41 arrives as a float; its repr is the shortest spelling, "1.41".
        api_version = repr(version)
    else:
        raise error("api-version", 'must be a string like "1.41"')
    major, dot, minor = api_version.partition(".")
    if not (dot and major.isdigit() and minor.isdigit() and major.isascii() and minor.isascii()):
        raise error("api-version", f'is {json.dumps(api_version)}, expected a version like "1.41"')
    return Config(base_url, api_version)


def normalize_base_url(raw):
    """`tcp://h:p` (Docker's own spelling) becomes `http://h:p`; a trailing `/` goes.

    Unix sockets are refused: a WebAssembly engine only has outgoing HTTP.
    """
    quoted = json.dumps(raw)
    scheme, sep, rest = raw.partition("://")
    if not sep:
        raise ValueError(f'is {quoted}, expected a URL like "http://127.0.0.1:2375"')
    scheme = scheme.lower()
    if scheme in ("http", "tcp"):
        scheme = "http"
    elif scheme in ("unix", "npipe"):
        raise ValueError(
            f"is {quoted}: the python-docker engine reaches the daemon over TCP only "
            "(use the native docker engine for a unix socket)"
        )
    elif scheme != "https":
        raise ValueError(f"is {quoted}: scheme {json.dumps(scheme)} is not http, https or tcp")
    rest = rest.rstrip("/")
    if not rest.split("/")[0]:
        raise ValueError(f"is {quoted}: it names no host")
    if "?" in rest or "#" in rest:
        raise ValueError(f"is {quoted}: a base URL has no query or fragment")
    return f"{scheme}://{rest}"


# --- names and paths ----------------------------------------------------------------


def encode(text):
    """Percent-encodes a query value or a single path segment: all but A-Z a-z 0-9 -_.~"""
    return quote(text, safe="")


def encode_path(text):
    """Percent-encodes an image reference used as a path: `/`, `:` and `@` are kept,
    as in `reg:5000/foo/bar:1` or `foo@sha256:...`."""
    return quote(text, safe="/:@")


def has_registry(image):
    """Whether the reference names a registry (`quay.io/x`, `reg:5000/x`, `localhost/x`)."""
    first, sep, _ = image.partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost")


def candidates(image):
    """The names under which the runtime may hold `image`.

    Podman stores a loaded or tagged `foo/bar:1` as `localhost/foo/bar:1` and its compat
    API does not always resolve the short name back; on Docker the second name is just
    not found, at the cost of one more request.
    """
    names = [image]
    if not has_registry(image) and not image.startswith("sha256:"):
        names.append(f"localhost/{image}")
    return names


def split_reference(image):
    """`repo[:tag]` split as the tag endpoint wants it; a `:` before the last `/` is a
    registry port, not a tag."""
    repo, sep, tag = image.rpartition(":")
    if sep and "/" not in tag:
        return repo, tag
    return image, "latest"


def image_inspect_path(name):
    return f"/images/{encode_path(name)}/json"


def image_tag_path(source, target):
    repo, tag = split_reference(target)
    return f"/images/{encode_path(source)}/tag?repo={encode(repo)}&tag={encode(tag)}"


def image_remove_path(name):
    """`DELETE /images/{name}`, never forced: Podman's forced removal takes the image's
    containers with it, running agents included. Unforced, the daemon removes just this
    name while others hold the image, and refuses (409, so `rejected`) to remove the
    last name of an image a container uses."""
    return f"/images/{encode_path(name)}"


def container_inspect_path(name):
    return f"/containers/{encode(name)}/json"


def container_create_path(name):
    return f"/containers/create?name={encode(name)}"


def container_start_path(container_id):
    return f"/containers/{encode(container_id)}/start"


def container_stop_path(name):
    """`POST /containers/{name}/stop` without `t`: the daemon then waits the agent's own
    stop timeout (`StopTimeout`, from `stop-timeout-secs`, else its default of 10 s)
    before it kills; a `t` here would override it."""
    return f"/containers/{encode(name)}/stop"


def container_remove_path(container_id):
    return f"/containers/{encode(container_id)}?force=1"


def container_list_path(labels):
    """`GET /containers/json?all=1&filters={"label":["k=v",...]}` for (key, value) pairs.

    `all=1`: stopped agents are listed too, so the host can replace them.
    """
    filters = json.dumps({"label": [f"{k}={v}" for k, v in labels]}, separators=(",", ":"))
    return f"/containers/json?all=1&filters={encode(filters)}"


def container_logs_path(name, lines):
    return f"/containers/{encode(name)}/logs?stdout=1&stderr=1&timestamps=1&tail={lines}"


def path_only(path):
    """`path` without its query, for messages."""
    return path.split("?", 1)[0]


# --- the agent spec -----------------------------------------------------------------


def create_body(spec, image):
    """The body of `POST /containers/create` for `spec`, running `image` (the name under
    which the daemon has it).

    A translation only, field for field as `create_body` in docker-api/src/api.rs and the
    host's native engines build it: every decision (env, mounts, the drpcli entrypoint)
    was the host's. Options left unset are left out, so the daemon's defaults apply.
    `spec` is the generated `AgentSpec` dataclass (any object with its attributes).
    """
    body = {
        "Image": image,
        "Env": [f"{kv.key}={kv.value}" for kv in spec.env],
        "Labels": {kv.key: kv.value for kv in spec.labels},
    }
    if spec.entrypoint is not None:
        body["Entrypoint"] = list(spec.entrypoint)
        # A replaced entrypoint runs without the image's command: an empty Cmd, not an
        # absent one (absent would mean "the image's").
        body["Cmd"] = []
    _put(body, "User", spec.security.user)
    _put(body, "WorkingDir", spec.process.workdir)
    _put(body, "StopTimeout", spec.process.stop_timeout_secs)
    body["HostConfig"] = _host_config(spec)
    return body


def _host_config(spec):
    """`HostConfig`: network, mounts, resources, security and the restart policy."""
    r, sec, p = spec.resources, spec.security, spec.process
    host = {"NetworkMode": spec.network}
    if spec.mounts:
        host["Mounts"] = [mount(m) for m in spec.mounts]
    _put(host, "Memory", r.memory)
    _put(host, "MemorySwap", r.memory_swap)
    # Docker counts CPUs in billionths: 0.5 CPU is 500000000. Rounded half away from
    # zero like Rust's f64::round (Python's round() would round half to even).
    if r.cpus is not None:
        host["NanoCpus"] = int(math.copysign(math.floor(abs(r.cpus) * 1e9 + 0.5), r.cpus))
    _put(host, "PidsLimit", r.pids_limit)
    _put(host, "ShmSize", r.shm_size)
    _put(host, "Privileged", sec.privileged)
    _put_list(host, "CapAdd", sec.cap_add)
    _put_list(host, "CapDrop", sec.cap_drop)
    _put_list(host, "SecurityOpt", sec.security_opt)
    if sec.devices:
        host["Devices"] = [device(d) for d in sec.devices]
    _put(host, "ReadonlyRootfs", sec.read_only_rootfs)
    _put(host, "Init", p.init)
    _put_list(host, "ExtraHosts", p.extra_hosts)
    _put_list(host, "Dns", p.dns)
    # Agents survive a daemon restart, as the native engines' do.
    host["RestartPolicy"] = {"Name": "unless-stopped"}
    return host


def _put(obj, key, value):
    if value is not None:
        obj[key] = value


def _put_list(obj, key, items):
    if items:
        obj[key] = list(items)


# The WIT enum `mount-kind` as Docker spells it. Keyed by the enum member's name so this
# module needs no generated bindings (the bindings' MountKind.BIND has name "BIND").
MOUNT_TYPES = {"BIND": "bind", "VOLUME": "volume", "TMPFS": "tmpfs"}


def mount(m):
    """One entry of `HostConfig.Mounts`. Docker's `Mounts` (not `Binds`) takes all three
    kinds, read-only and a tmpfs size alike."""
    out = {"Target": m.target}
    _put(out, "Source", m.source)
    out["Type"] = MOUNT_TYPES[m.kind.name]
    if m.read_only:
        out["ReadOnly"] = True
    if m.tmpfs_size is not None:
        out["TmpfsOptions"] = {"SizeBytes": m.tmpfs_size}
    return out


def device(text):
    """`host[:container[:permissions]]`, as `docker run --device` splits it."""
    parts = text.split(":", 2) + ["", ""]
    host = parts[0]
    container = parts[1] or host
    permissions = parts[2] or "rwm"
    return {"PathOnHost": host, "PathInContainer": container, "CgroupPermissions": permissions}


# --- responses ----------------------------------------------------------------------
#
# What these return goes back to the host as WIT strings and bools. A value of another
# type there (a number where a string belongs) cannot be lowered and traps, so a daemon
# answering the wrong types is caught here, as a TypeError the engine reports as
# `failed`.


def expect_string(value, what):
    if not isinstance(value, str):
        raise TypeError(f"{what} is {json_kind(value)}, not a string")
    return value


def expect_labels(value):
    labels = value or {}
    if not isinstance(labels, dict):
        raise TypeError(f"Labels is {json_kind(labels)}, not an object")
    return {expect_string(k, "a label name"): expect_string(v, f"label {k}") for k, v in labels.items()}


def agent_from_inspect(inspect, name):
    """`GET /containers/{name}/json` as (id, running, labels dict).

    Running means `State.Status` is "running", the word `GET /containers/json` reports
    as `State` (see agent_from_summary), so agent-start and agent-list agree. Docker's
    boolean `State.Running` is also true while a container is `restarting` (its process
    exited and the restart policy waits to run it again) or `paused`: an agent whose
    process keeps exiting would then be kept by agent-start although agent-list shows it
    not running. `Running` is used only when a daemon reports no `Status`.
    """
    state = inspect.get("State") or {}
    config = inspect.get("Config") or {}
    status = state.get("Status")
    running = status == "running" if isinstance(status, str) else bool(state.get("Running"))
    return expect_string(inspect["Id"], "Id"), running, expect_labels(config.get("Labels"))


def agent_from_summary(summary):
    """One entry of `GET /containers/json` as (name, id, running, labels dict).

    `State` is compared as a plain string: Podman's compat API reports libpod states
    (`stopped`, `configured`, ...) besides Docker's.
    """
    names = summary.get("Names") or []
    name = expect_string(names[0], "Names[0]").lstrip("/") if names else ""
    return name, expect_string(summary["Id"], "Id"), summary.get("State") == "running", expect_labels(summary.get("Labels"))


def loaded_reference(line):
    """What `docker load` says it loaded: `Loaded image: X` or `Loaded image ID: X`
    (Podman: `Loaded image(s): X,Y`, of which the first)."""
    line = line.strip()
    if not line.startswith("Loaded image"):
        return None
    _, sep, names = line[len("Loaded image"):].partition(":")
    if not sep:
        return None
    for candidate in names.split(","):
        if candidate.strip():
            return candidate.strip()
    return None


def parse_load_output(body):
    """Reads the body of `POST /images/load`.

    Returns ("loaded", reference), ("error", message) or ("nothing", None). The body is a
    stream of JSON messages (`{"stream":"Loaded image: X\\n"}`, or
    `{"errorDetail":{"message":...},"error":...}` when the archive is refused even though
    the status was 200), or plain text from a daemon that did not answer in JSON.
    """
    text = body.decode("utf-8", "replace")
    decoder = json.JSONDecoder()
    loaded, parsed_any, at = None, False, 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at >= len(text):
            break
        try:
            message, at = decoder.raw_decode(text, at)
        except ValueError:
            break
        parsed_any = True
        if not isinstance(message, dict):
            continue
        detail = message.get("errorDetail")
        error = detail.get("message") if isinstance(detail, dict) else None
        if not isinstance(error, str) or not error:
            error = message.get("error")
        if isinstance(error, str) and error:
            return ("error", error.strip())
        said = message.get("stream")
        if not isinstance(said, str):
            said = message.get("status")
        if loaded is None and isinstance(said, str):
            loaded = loaded_reference(said)
    if not parsed_any:
        for line in text.splitlines():
            loaded = loaded_reference(line)
            if loaded:
                break
    return ("loaded", loaded) if loaded else ("nothing", None)


def error_message(body):
    """The daemon's explanation in an error response: its JSON `message` (Docker and
    Podman both send one), else the body as text, shortened to 500 characters."""
    text = None
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
            text = parsed["message"]
    except ValueError:
        pass
    if text is None:
        text = body.decode("utf-8", "replace")
    text = text.strip()
    return text[:500] + "…" if len(text) > 500 else text


def demultiplex(body):
    """The payloads of a multiplexed log body in order, or None when it is not one.

    Without a TTY the daemon frames stdout and stderr: an 8-byte header (stream type 0-2,
    three zero bytes, a big-endian payload length) then the payload. A TTY's output (or
    a daemon that does not frame) is the raw text, which fails these checks.
    """
    out, at = bytearray(), 0
    while at < len(body):
        header = body[at:at + 8]
        if len(header) < 8 or header[0] > 2 or header[1:4] != b"\0\0\0":
            return None
        length = int.from_bytes(header[4:8], "big")
        payload = body[at + 8:at + 8 + length]
        if len(payload) < length:
            return None
        out += payload
        at += 8 + length
    return bytes(out)


def log_lines(body, lines):
    """The lines of a `GET /containers/{name}/logs` body, at most the last `lines`,
    without line ends. Frames may split a line; joining the payloads first mends it."""
    text = demultiplex(body)
    if text is None:
        text = body
    # Split on \n only (not str.splitlines, which also splits on \r, \x0b, \x1c, ...),
    # dropping a \r before it: the same lines Rust's str::lines gives.
    all_lines = text.decode("utf-8", "replace").split("\n")
    if all_lines and all_lines[-1] == "":
        all_lines.pop()
    all_lines = [line[:-1] if line.endswith("\r") else line for line in all_lines]
    return all_lines[len(all_lines) - min(lines, len(all_lines)):]
