"""A small blocking HTTP client over `wasi:http/outgoing-handler@0.2.12`.

The host sends the request for the engine, and only to the `host:port`s its
`allowed-hosts` setting lists; any other destination fails with kind "denied". TLS (an
`https://` URL) is done by the host, too. The engine world has no sockets, so Python's
own `http.client`/`urllib.request` cannot work here: this is the way out.

Why blocking and not asyncio (componentize-py's examples use an asyncio loop over
`wasi:io/poll`): the host calls an engine one request at a time and waits for its
answer, so there is nothing to overlap. A pollable's `block()` parks the call in the host
without spinning, which is all a synchronous engine needs.

WASI resources are handles the host owns. componentize-py releases one when its Python
object is collected, but some must go in a set order (a pollable before the future it
watches, a stream before its body, the body's stream before `finish`), so this module
releases them explicitly with `with` blocks or `__exit__`.
"""

from componentize_py_types import Err
from wit_world.imports import outgoing_handler
from wit_world.imports import wasi_http_types as http
from wit_world.imports.streams import StreamError_Closed, StreamError_LastOperationFailed

# `blocking-write-and-flush` takes at most 4096 bytes per call (wasi:io's contract).
WRITE_CHUNK = 4096
# Largest splice asked for at once; the host may move less.
SPLICE_CHUNK = 1 << 20
# One read of a response body.
READ_CHUNK = 64 * 1024

_METHODS = {
    "GET": http.Method_Get(),
    "HEAD": http.Method_Head(),
    "POST": http.Method_Post(),
    "PUT": http.Method_Put(),
    "DELETE": http.Method_Delete(),
    "PATCH": http.Method_Patch(),
    "OPTIONS": http.Method_Options(),
}


class HttpError(Exception):
    """Why a request got no response. `kind` is one of:

    * "invalid": the request could not be built (URL, method, header);
    * "denied": the host refused it (destination not in `allowed-hosts`);
    * "transport": the destination could not be reached or the exchange broke off
      (DNS, connection refused, timeout, TLS, protocol error);
    * "body": the request body could not be sent (the connection failed), or the
      response body not read;
    * "source": the stream a body was spliced from failed (for the image archive: the
      host could not go on feeding it). The request was aborted, never finished.

    A response with an error status is not an HttpError: it is a Response.
    """

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind
        self.message = message


class Response:
    """A response with its whole body (bytes)."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def ok(self):
        return 200 <= self.status < 300


def send(method, url, body=None, headers=(), connect_timeout_s=None):
    """Sends one request and returns its Response once the whole body has arrived.

    `body` is None, bytes, or a `wasi:io` InputStream (e.g. the image archive), which is
    spliced into the request by the host as it is read: its bytes never pass through
    this instance's memory, so an archive of gigabytes needs none.
    """
    what = f"{method} {url}"
    scheme, authority, path_with_query = split_url(what, url)

    headers = [(name.lower(), value) for name, value in headers]
    # A request without a body must say so: the body is always taken below, and a taken
    # body without content-length goes chunked (GET and HEAD aside, which then go
    # without one); dockerd refuses a chunked `POST .../start`. A streamed body has no
    # length known up front and goes chunked, which `POST /images/load` accepts.
    if body is None:
        length = None if method in ("GET", "HEAD") else 0
    elif isinstance(body, (bytes, bytearray)):
        length = len(body)
    else:
        length = None
    if length is not None and not any(name == "content-length" for name, _ in headers):
        headers.append(("content-length", str(length).encode()))

    try:
        fields = http.Fields.from_list(headers)
    except Err as e:
        raise HttpError("invalid", f"{what}: bad header: {type(e.value).__name__}") from None
    request = http.OutgoingRequest(fields)
    try:
        request.set_method(_METHODS.get(method) or http.Method_Other(method))
        request.set_scheme(scheme)
        request.set_authority(authority)
        request.set_path_with_query(path_with_query)
    except Err:
        request.__exit__(None, None, None)
        raise HttpError("invalid", f"{what}: the host refused the method, scheme, authority or path") from None

    # Take the body before `handle` consumes the request; it is written after `handle`
    # so that a streamed body flows while the request is in flight.
    outgoing_body = request.body()
    try:
        future = outgoing_handler.handle(request, _options(connect_timeout_s))
    except Err as e:
        outgoing_body.__exit__(None, None, None)
        raise _from_code(what, e.value) from None

    sent_error = _write_body(outgoing_body, body)
    if sent_error is None:
        try:
            http.OutgoingBody.finish(outgoing_body, None)
        except Err as e:
            sent_error = f"finishing the request body: {describe_code(e.value)}"
    else:
        # Dropped unfinished, the host aborts the request instead of sending a short
        # body that the daemon might take for a whole one.
        outgoing_body.__exit__(None, None, None)
    if isinstance(sent_error, _SourceFailed):
        # The daemon's answer to an aborted upload says nothing more: do not wait for
        # it. Dropping the future cancels the request.
        future.__exit__(None, None, None)
        raise HttpError("source", f"{what}: {sent_error}")

    with future:
        outcome = _wait(future)
    if isinstance(outcome, HttpError):
        # No response: why the exchange failed (refused, denied, timed out) says more
        # than the body's failure to go out, which is its consequence.
        raise HttpError(outcome.kind, f"{what}: {outcome.message}")
    response = outcome
    if sent_error is not None and 200 <= response.status() < 300:
        response.__exit__(None, None, None)
        raise HttpError("body", f"{what}: sending the request body: {sent_error}")
    # Either all was sent, or the daemon answered with an error before taking the whole
    # body: its answer says more than the broken pipe does.
    return _read_response(what, response)


def _options(connect_timeout_s):
    if connect_timeout_s is None:
        return None
    options = http.RequestOptions()
    try:
        options.set_connect_timeout(int(connect_timeout_s * 1_000_000_000))
    except Err:
        pass  # A host that does not support the timeout refuses it; its default applies.
    return options


class _SourceFailed(str):
    """Why a body could not be sent, when the fault is its source stream's."""


def _write_body(outgoing_body, body):
    """Writes `body` into the request. Returns None, or why it could not be sent (a
    `_SourceFailed` when the source stream failed, a plain str otherwise)."""
    if body is None:
        return None
    try:
        out = outgoing_body.write()
    except Err:
        return "the request body stream is unavailable"
    # The output stream is a child of the body: released before `finish`.
    with out:
        if isinstance(body, (bytes, bytearray)):
            for at in range(0, len(body), WRITE_CHUNK):
                try:
                    out.blocking_write_and_flush(bytes(body[at:at + WRITE_CHUNK]))
                except Err as e:
                    return _stream_error(e.value, "writing")
            return None
        return _splice_all(out, body)


def _splice_all(out, source):
    """Has the host copy `source` (an InputStream) into `out` until the source ends,
    never through this instance's memory."""
    sent = 0
    while True:
        try:
            sent += out.blocking_splice(source, SPLICE_CHUNK)
            continue
        except Err as e:
            error = e.value
        # A splice fails for either side, and says not which. The output stream does:
        # if it still takes writes, the fault was the source's.
        if isinstance(error, StreamError_Closed):
            # The source ended (the normal way out), or the connection closed.
            try:
                out.check_write()
            except Err:
                return f"the connection closed after {sent} bytes of the body"
            try:
                out.blocking_flush()
            except Err as e:
                return _stream_error(e.value, "flushing")
            return None
        with error.value as cause:
            code = http.http_error_code(cause)
            detail = describe_code(code) if code is not None else cause.to_debug_string()
        if code is None and _still_writable(out):
            return _SourceFailed(f"reading the body's source failed after {sent} bytes: {detail}")
        return f"sending the body failed after {sent} bytes: {detail}"


def _still_writable(out):
    try:
        out.check_write()
        return True
    except Err:
        return False


def _stream_error(error, doing):
    if isinstance(error, StreamError_LastOperationFailed):
        with error.value as cause:
            code = http.http_error_code(cause)
            detail = describe_code(code) if code is not None else cause.to_debug_string()
        return f"{doing}: {detail}"
    return f"{doing}: the connection closed"


def _wait(future):
    """Blocks until the response head arrives: the IncomingResponse, or an HttpError
    (without the request in its message)."""
    while True:
        outcome = future.get()
        if outcome is not None:
            break
        # The pollable is a child of the future: released before it.
        with future.subscribe() as pollable:
            pollable.block()
    # outcome: Ok(Ok(response)) | Ok(Err(error-code)) | Err(None) (already taken).
    if isinstance(outcome, Err):
        return HttpError("transport", "internal error: response already taken")
    inner = outcome.value
    if isinstance(inner, Err):
        return _from_code("", inner.value)
    return inner.value


def _read_response(what, response):
    status = response.status()
    with response.headers() as fields:
        headers = fields.entries()
    try:
        incoming = response.consume()
        stream = incoming.stream()
    except Err:
        response.__exit__(None, None, None)
        raise HttpError("body", f"{what}: the response body is unavailable") from None
    chunks, size, failure = [], 0, None
    with stream:
        while True:
            try:
                chunk = stream.blocking_read(READ_CHUNK)
            except Err as e:
                if not isinstance(e.value, StreamError_Closed):
                    failure = f"{what}: reading the response body after {size} bytes: {_stream_error(e.value, 'reading')}"
                break
            chunks.append(chunk)
            size += len(chunk)
    # Children before parents: stream (above), body, response.
    http.IncomingBody.finish(incoming).__exit__(None, None, None)
    response.__exit__(None, None, None)
    if failure is not None:
        raise HttpError("body", failure)
    return Response(status, headers, b"".join(chunks))


def _from_code(what, code):
    message = f"{what}: {describe_code(code)}" if what else describe_code(code)
    if isinstance(code, (http.ErrorCode_HttpRequestDenied, http.ErrorCode_DestinationIpProhibited)):
        return HttpError("denied", message)
    if isinstance(
        code,
        (
            http.ErrorCode_HttpRequestMethodInvalid,
            http.ErrorCode_HttpRequestUriInvalid,
            http.ErrorCode_HttpRequestUriTooLong,
            http.ErrorCode_HttpRequestHeaderSectionSize,
            http.ErrorCode_HttpRequestHeaderSize,
        ),
    ):
        return HttpError("invalid", message)
    return HttpError("transport", message)


_CODE_WORDS = {
    http.ErrorCode_DnsTimeout: "DNS lookup timed out",
    http.ErrorCode_DestinationNotFound: "destination not found",
    http.ErrorCode_DestinationUnavailable: "destination unavailable",
    http.ErrorCode_DestinationIpProhibited: "destination IP address prohibited",
    http.ErrorCode_DestinationIpUnroutable: "destination IP address unroutable",
    http.ErrorCode_ConnectionRefused: "connection refused",
    http.ErrorCode_ConnectionTerminated: "connection terminated",
    http.ErrorCode_ConnectionTimeout: "connection timed out",
    http.ErrorCode_ConnectionReadTimeout: "timed out reading from the connection",
    http.ErrorCode_ConnectionWriteTimeout: "timed out writing to the connection",
    http.ErrorCode_ConnectionLimitReached: "connection limit reached",
    http.ErrorCode_TlsProtocolError: "TLS protocol error",
    http.ErrorCode_TlsCertificateError: "TLS certificate error",
    http.ErrorCode_HttpRequestDenied: "request denied by the host (destination not in the engine's allowed-hosts)",
    http.ErrorCode_HttpResponseIncomplete: "incomplete response",
    http.ErrorCode_HttpResponseTimeout: "timed out waiting for the response",
    http.ErrorCode_HttpProtocolError: "HTTP protocol error",
}


def describe_code(code):
    """`wasi:http` `error-code` in words."""
    words = _CODE_WORDS.get(type(code))
    if words:
        return words
    if isinstance(code, http.ErrorCode_DnsError):
        return f"DNS error ({code.value.rcode})" if code.value.rcode else "DNS error"
    if isinstance(code, http.ErrorCode_InternalError):
        return f"internal error: {code.value}" if code.value else "internal error"
    if isinstance(code, http.ErrorCode_TlsAlertReceived):
        return f"TLS alert received: {code.value.alert_message}" if code.value.alert_message else "TLS alert received"
    # The rest: the case's name, e.g. ErrorCode_HttpRequestBodySize -> HttpRequestBodySize.
    return type(code).__name__.removeprefix("ErrorCode_")


def split_url(what, url):
    """`scheme://authority/path?query` -> (Scheme, authority, "/path?query")."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise HttpError("invalid", f"{what}: the URL has no scheme (expected e.g. http://host:port/path)")
    rest = rest.split("#", 1)[0]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:]
    if not authority:
        raise HttpError("invalid", f"{what}: the URL has no host")
    if "@" in authority:
        raise HttpError("invalid", f"{what}: credentials in the URL are not supported")
    if not path:
        path = "/"
    elif path.startswith("?"):
        path = "/" + path
    lowered = scheme.lower()
    wit_scheme = {"http": http.Scheme_Http(), "https": http.Scheme_Https()}.get(lowered) or http.Scheme_Other(lowered)
    return wit_scheme, authority, path
