"""The `python-docker` engine: agents are containers of a Docker daemon (or Podman's
Docker-compatible API) reached over TCP through the Docker Engine HTTP API.

It is the Rust `docker-api` engine (engines-wasm/docker-api) written again in Python
with componentize-py, against the same WIT world `context-engines:engine/engine@0.2.0`:
the contract does not care which language an engine is written in.

Settings (the engine's entry of `context-engines/engine-config`):

    {"base-url": "http://127.0.0.1:2375", "api-version": "1.41",
     "allowed-hosts": ["127.0.0.1:2375"]}

* `base-url` (required): `http://host:port` (`tcp://` is taken as `http`; `https://`
  works when the host's TLS trusts the daemon).
* `api-version` (default 1.41): requests go to `{base-url}/v{api-version}/...`.
* `allowed-hosts`: read by the host, which lets the engine reach only those; it must
  list the `host:port` of `base-url`.

How the pieces fit: `Lifecycle` (bottom of this file) is the export componentize-py
looks for; it only adapts the WIT calls to `DockerEngine`, which does the work with
`docker_api` (pure data, unit-tested on CPython) and `wasi_http` (the HTTP client).

componentize-py runs this module once at build time and snapshots the interpreter
(no filesystem exists at run time), so every import must be at the top level: a module
first imported inside a function at run time would not be found.
"""

import json
import traceback
from http import HTTPStatus

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import context_engines_engine_types as wit
from wit_world.imports import log

import docker_api as api
import wasi_http

NAME = "python-docker"
VERSION = "0.1.0"
# A daemon that does not accept a connection in this time is down.
CONNECT_TIMEOUT_S = 10


# --- errors and logging -------------------------------------------------------------


class EngineError(Exception):
    """An `engine-error`: `case` is the generated variant class (`wit.EngineError_...`),
    `message` what operators read (say what failed and where; never a token)."""

    def __init__(self, case, message):
        super().__init__(message)
        self.case = case
        self.message = message


def unreachable(message):
    return EngineError(wit.EngineError_Unreachable, message)


def image_missing(message):
    return EngineError(wit.EngineError_ImageMissing, message)


def bad_archive(message):
    return EngineError(wit.EngineError_BadArchive, message)


def rejected(message):
    return EngineError(wit.EngineError_Rejected, message)


def bad_config(message):
    return EngineError(wit.EngineError_BadConfig, message)


def failed(message):
    return EngineError(wit.EngineError_Failed, message)


def debug(message):
    log.log(log.Level.DEBUG, message)


def info(message):
    log.log(log.Level.INFO, message)


def status_line(status):
    """`409 Conflict`, or the bare code when it has no standard phrase."""
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def first_label(pairs, key):
    """The value of `key` in a list of `key-value`s (the first, as the Rust SDK reads it)."""
    for pair in pairs:
        if pair.key == key:
            return pair.value
    return None


def key_values(labels):
    """A dict of labels as sorted `key-value`s, so answers do not depend on the order the
    daemon happened to use."""
    return [wit.KeyValue(key, value) for key, value in sorted(labels.items())]


# --- the engine ---------------------------------------------------------------------


class DockerEngine:
    """Where the daemon is, and every operation against it.

    The host may discard an instance at any time and `configure` a fresh one, so this
    holds nothing but what the settings give.
    """

    def __init__(self, config):
        self.config = config

    # The plumbing: one API request, and the errors its outcome means.

    def context(self, method, path):
        """`python-docker at http://...: METHOD /path`, the start of every message."""
        return f"{NAME} at {self.config.base_url}: {method} {api.path_only(path)}"

    def call(self, method, path, body=None, content_type=None):
        """Sends one API request. A response of any status is returned (the caller knows
        what each means); a failure to get one is an EngineError."""
        url = self.config.url(path)
        headers = []
        if isinstance(body, dict):
            body = json.dumps(body, separators=(",", ":")).encode()
            content_type = "application/json"
        if content_type:
            headers.append(("content-type", content_type.encode()))
        try:
            return wasi_http.send(method, url, body=body, headers=headers, connect_timeout_s=CONNECT_TIMEOUT_S)
        except wasi_http.HttpError as e:
            # The client's message starts with the method and full URL; ours says it
            # shorter, so drop that.
            cause = e.message.removeprefix(f"{method} {url}: ")
            context = self.context(method, path)
            if e.kind == "transport":
                raise unreachable(f"{context}: {cause}") from None
            if e.kind == "denied":
                raise bad_config(f"{context}: {cause}: add the daemon's host:port to `allowed-hosts`") from None
            if e.kind == "source":
                # Only the image archive is ever a streamed source: the host could not go
                # on feeding it (a read error, a corrupt gzip, over the size limit).
                raise bad_archive(f"{context}: {cause}") from None
            raise failed(f"{context}: {cause}") from None

    def status_error(self, method, path, response):
        """The error an unexpected status means: a 4xx is the daemon refusing the request
        (`rejected`), anything else its failure (`failed`)."""
        message = f"{self.context(method, path)}: {status_line(response.status)}: {api.error_message(response.body)}"
        return rejected(message) if 400 <= response.status < 500 else failed(message)

    def parse(self, method, path, response, convert=lambda value: value):
        """A successful response's JSON body, passed through `convert`; a body that is
        not what the API promises is `failed`, not a trap."""
        try:
            return convert(json.loads(response.body))
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
            raise failed(
                f"{self.context(method, path)}: status {response.status}: "
                f"the body is not the JSON expected: {type(e).__name__}: {e}"
            ) from None

    # Lookups.

    def find_image(self, image):
        """(the name the daemon has it under, its id), or None."""
        for candidate in api.candidates(image):
            path = api.image_inspect_path(candidate)
            response = self.call("GET", path)
            if response.status == 200:
                return candidate, self.parse("GET", path, response, lambda v: api.expect_string(v["Id"], "Id"))
            if response.status != 404:
                raise self.status_error("GET", path, response)
        return None

    def inspect_agent(self, name):
        """(id, running, labels dict) of the container named `name`, or None."""
        path = api.container_inspect_path(name)
        response = self.call("GET", path)
        if response.status == 200:
            return self.parse("GET", path, response, lambda v: api.agent_from_inspect(v, name))
        if response.status == 404:
            return None
        raise self.status_error("GET", path, response)

    def remove_container(self, container):
        """Force-removes a container: True when removed (or removal already under way),
        False when there was none."""
        path = api.container_remove_path(container)
        response = self.call("DELETE", path)
        if response.ok:
            return True
        if response.status == 404:
            return False
        if response.status == 409:
            # Removal already in progress (a concurrent stop): the outcome is the same.
            return True
        raise self.status_error("DELETE", path, response)

    def create_and_start(self, spec, image):
        """Creates and starts the agent from `image`, the name the daemon has it under."""
        path = api.container_create_path(spec.name)
        response = self.call("POST", path, api.create_body(spec, image))
        if response.status == 404:
            # The image went away since we looked: the host loads it and calls again.
            raise image_missing(
                f"{self.context('POST', path)}: {status_line(response.status)}: {api.error_message(response.body)}"
            )
        if not response.ok:
            raise self.status_error("POST", path, response)
        created = self.parse("POST", path, response, lambda v: api.expect_string(v["Id"], "Id"))

        path = api.container_start_path(created)
        response = self.call("POST", path)
        # 304: already started.
        if not (response.ok or response.status == 304):
            error = self.status_error("POST", path, response)
            # A created-but-unstartable container would hold the name forever.
            try:
                self.remove_container(created)
            except EngineError:
                pass
            raise error
        debug(f"started agent {spec.name} from {image}")
        return wit.AgentInfo(spec.name, created, True, list(spec.labels))

    # The lifecycle, one method per WIT function.

    def image_id(self, image):
        found = self.find_image(image)
        return found[1] if found else None

    def image_load(self, image, archive):
        path = api.IMAGE_LOAD_PATH
        # The archive goes straight from the host's download into the request.
        response = self.call("POST", path, archive, content_type="application/x-tar")
        context = self.context("POST", path)
        if not response.ok:
            raise bad_archive(f"{context}: {status_line(response.status)}: {api.error_message(response.body)}")
        # A 200 does not mean it loaded: dockerd reports a refused archive in the body.
        outcome, detail = api.parse_load_output(response.body)
        if outcome == "error":
            raise bad_archive(f"{context}: {detail}")
        if outcome == "nothing":
            raise bad_archive(f"{context}: the daemon accepted the archive but reported no image in it")
        # The archive names its image itself (or only by id); `image` is what the Context
        # calls it, and what agent-start will look for.
        info(f"loaded {detail}, tagging it {image}")
        self.image_tag(detail, image)

    def image_tag(self, source, target):
        refused = None
        for candidate in api.candidates(source):
            path = api.image_tag_path(candidate, target)
            response = self.call("POST", path)
            if response.ok:
                return
            if response.status != 404:
                raise self.status_error("POST", path, response)
            # Keep the first refusal: it names the image as the caller did.
            if refused is None:
                refused = (
                    f"{self.context('POST', path)}: {status_line(response.status)}: {api.error_message(response.body)}"
                )
        raise image_missing(refused or "")

    def image_remove(self, image):
        for candidate in api.candidates(image):
            path = api.image_remove_path(candidate)
            response = self.call("DELETE", path)
            if response.ok:
                return True
            if response.status != 404:
                raise self.status_error("DELETE", path, response)
        return False

    def agent_start(self, spec):
        # The image first: a start that cannot happen must leave the running agent alone.
        found = self.find_image(spec.image)
        if found is None:
            raise image_missing(f"{spec.image} (not on the daemon at {self.config.base_url})")
        image = found[0]

        existing = self.inspect_agent(spec.name)
        if existing is not None:
            container, running, labels = existing
            # Two plugin instances never touch each other's agents, nor anything else
            # that happens to hold the name.
            owner = labels.get(api.PLUGIN_LABEL)
            if owner != first_label(spec.labels, api.PLUGIN_LABEL):
                if owner is None:
                    raise rejected(
                        f"container name '{spec.name}' is held by a container no plugin owns "
                        "(no drp.plugin label), which is left alone"
                    )
                raise rejected(
                    f"container name '{spec.name}' is held by an agent of plugin '{owner}', which is left alone"
                )
            if running and labels.get(api.SPEC_LABEL) == first_label(spec.labels, api.SPEC_LABEL):
                return wit.AgentInfo(spec.name, container, True, key_values(labels))
            # Stopped, or another spec: replace it, so exactly one agent remains.
            debug(f"replacing agent {spec.name} ({'another spec' if running else 'not running'})")
            self.remove_container(container)
        return self.create_and_start(spec, image)

    def agent_stop(self, name):
        path = api.container_stop_path(name)
        response = self.call("POST", path)
        if response.status == 404:
            return False
        # 204 stopped, 304 already stopped, anything else: the forced removal settles it.
        return self.remove_container(name)

    def agent_list(self, labels):
        path = api.container_list_path([(kv.key, kv.value) for kv in labels])
        response = self.call("GET", path)
        if not response.ok:
            raise self.status_error("GET", path, response)
        found = self.parse("GET", path, response, lambda v: [api.agent_from_summary(s) for s in v])
        return [wit.AgentInfo(name, cid, running, key_values(lbls)) for name, cid, running, lbls in found]

    def agent_logs(self, name, lines):
        path = api.container_logs_path(name, lines)
        response = self.call("GET", path)
        if response.ok:
            return api.log_lines(response.body, lines)
        if response.status == 404:
            raise rejected(f"{self.context('GET', path)}: no agent named {name}")
        raise self.status_error("GET", path, response)


# --- the export ---------------------------------------------------------------------

# This instance's engine: None before `configure`, the EngineError when it failed.
_engine = None


def _call(operation):
    """Runs `operation(engine)` for an export, turning its outcome into what the WIT
    function returns.

    componentize-py maps a raised `Err(engine-error)` to the function's error result; any
    other exception would trap, which discards the instance and loses the traceback
    (stderr is closed). A bug here is therefore reported as `failed`, with the traceback
    in the plugin's log, and the instance lives on. Two things still trap, and the host
    copes (it discards the instance and reports the call as failed): a result of the
    wrong type, which componentize-py cannot hand to the host (docker_api checks the
    daemon's answers for that), and recursion deep enough to exhaust the WebAssembly
    stack, which comes before Python's RecursionError.
    """
    if _engine is None:
        raise Err(wit.EngineError_BadConfig(f"engine {NAME} was called before configure"))
    if isinstance(_engine, EngineError):
        raise Err(wit.EngineError_BadConfig(f"engine {NAME} is not configured: configure failed: {_engine.message}"))
    try:
        return operation(_engine)
    except EngineError as e:
        raise Err(e.case(e.message)) from None
    except Exception as e:  # noqa: BLE001 - the boundary: nothing may escape as a trap
        try:
            log.log(log.Level.ERROR, "unexpected exception:\n" + traceback.format_exc().rstrip())
        except Exception:  # noqa: BLE001 - reporting the bug must not become another one
            pass
        raise Err(wit.EngineError_Failed(f"{NAME}: unexpected {type(e).__name__}: {e}")) from None


def _warm_up_traceback():
    """Formats one traceback while componentize-py builds the snapshot, so whatever
    `traceback` imports lazily is already loaded when a real one is formatted at run
    time, where no module can be imported any more."""
    try:
        raise ValueError("warm-up")
    except ValueError:
        traceback.format_exc()


_warm_up_traceback()


def describe():
    # The words the host reads, each applied in full by create_body: refusing a spec
    # that needs an undeclared one is the host's job, so declare only what is applied.
    applied = ["mounts", "resources", "security", "process", "logs"]
    # Free-form words, only shown.
    shown = ["docker-engine-api", "podman-compat", "streamed-load", "python"]
    return wit.EngineInfo(NAME, VERSION, applied + shown)


class Lifecycle(exports.Lifecycle):
    """The export `context-engines:engine/lifecycle@0.2.0`. componentize-py finds it by
    this name in the app module; every method is one WIT function, documented in
    wit/engine.wit."""

    def describe(self):
        return describe()

    def configure(self, settings_json):
        global _engine
        try:
            _engine = DockerEngine(api.parse_settings(NAME, settings_json))
        except api.SettingsError as e:
            _engine = bad_config(str(e))
            raise Err(wit.EngineError_BadConfig(str(e))) from None

    def image_id(self, image):
        return _call(lambda engine: engine.image_id(image))

    def image_load(self, image, archive):
        # `archive` is an owned wasi:io input-stream: released here whatever happens, so
        # the host knows at once that no more of it will be read.
        with archive:
            return _call(lambda engine: engine.image_load(image, archive))

    def image_tag(self, source, target):
        return _call(lambda engine: engine.image_tag(source, target))

    def image_remove(self, image):
        return _call(lambda engine: engine.image_remove(image))

    def agent_start(self, spec):
        return _call(lambda engine: engine.agent_start(spec))

    def agent_stop(self, name):
        return _call(lambda engine: engine.agent_stop(name))

    def agent_list(self, labels):
        return _call(lambda engine: engine.agent_list(labels))

    def agent_logs(self, name, lines):
        return _call(lambda engine: engine.agent_logs(name, lines))
