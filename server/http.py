"""The KServe v2 REST API (with Triton's extensions its clients use) and the web page,
beside gRPC in the same process, on the same InferenceCore: an HTTP request and a gRPC
request for one model can share a dynamic batch, and statistics and metrics count both.

Like the servicer, this layer only translates: JSON (or Triton's binary tensor
extension) to the same protobuf messages the core takes, errors through the one table
in server.status. It is aiohttp on an event loop of its own thread; the core's calls
block (a request waits for its batch), so they run on a thread pool as gRPC's do.

Binary tensor extension (Triton): a body may be a JSON header of
`Inference-Header-Content-Length` bytes followed by raw little-endian tensors, each
input's size in its `binary_data_size` parameter; outputs come back the same way when
asked for (`binary_data_output`, or an output's `binary_data`).

BYTES tensors travel as JSON strings (UTF-8) or, in binary, in their raw form (each
element's 4-byte little-endian length, then its bytes). A tensor in system shared
memory (Triton's /v2/systemsharedmemory extension) names its region in its parameters
and carries no data; an output written there comes back without data.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from proto import grpc_service_pb2 as pb
from server.codec import SHARED_MEMORY, decode_bytes, encode_bytes
from server.core import InferenceCore
from server.security import bearer_refusal
from server.settings import ServeSettings
from server.status import HTTP_STATUS, failure
from server.workers import Peers, merge_statistics
from zoo.datatypes import BYTES, DATATYPES
from zoo.errors import InvalidArgumentError, NotFoundError, ResourceExhaustedError, ZooError

log = logging.getLogger(__name__)

WEB = Path(__file__).resolve().parent / "web"
HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_TYPE = "application/octet-stream"
# A JSON body's Content-Type: tritonclient.http sends application/octet-stream, and a
# missing one is taken as JSON, as Triton does.
JSON_TYPES = ("application/json", BINARY_TYPE, "")
# Paths anyone may reach with a token set: health (as on gRPC) and the page itself.
OPEN_PATHS = ("/v2/health/",)
OPEN_EXACT = ("/",)
OPEN_PREFIX_WEB = "/web/"
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
                 ".png": "image/png", ".svg": "image/svg+xml"}  # fmt: skip

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ClientError(InvalidArgumentError):
    """A request the REST layer cannot read (body, header, content type)."""


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _message_json(message: Message) -> dict[str, Any]:
    """A protobuf message as Triton's REST API writes it: proto field names, zeros shown,
    and 64-bit integers as JSON numbers (protobuf's JSON mapping makes them strings,
    which perf_analyzer and tritonclient.http do not read as shapes and counts)."""
    value = json_format.MessageToDict(
        message, preserving_proto_field_name=True, including_default_value_fields=True
    )
    return _numbers(value, message.DESCRIPTOR)


_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def _numbers(value: dict[str, Any], descriptor: Descriptor) -> dict[str, Any]:
    for field in descriptor.fields:
        if field.name not in value:
            continue
        item = value[field.name]
        repeated = field.label == FieldDescriptor.LABEL_REPEATED
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            inner = field.message_type.fields_by_name["value"]
            value[field.name] = {k: _number_field(v, inner) for k, v in item.items()}
        elif repeated:
            value[field.name] = [_number_field(v, field) for v in item]
        else:
            value[field.name] = _number_field(item, field)
    return value


def _number_field(item: Any, field: FieldDescriptor) -> Any:
    if field.message_type is not None:
        return _numbers(item, field.message_type)
    return int(item) if field.type in _INT64_TYPES else item


# --- JSON tensors <-> protobuf tensors --------------------------------------------------


def _parameters(target: Any, parameters: Any, where: str) -> None:
    """JSON parameters into a protobuf parameter map, typed by their JSON type."""
    if parameters is None:
        return
    if not isinstance(parameters, dict):
        raise ClientError(f"{where} parameters: expected a JSON object, got {_kind(parameters)}")
    for key, value in parameters.items():
        entry = target[key]
        if isinstance(value, bool):
            entry.bool_param = value
        elif isinstance(value, int):
            entry.int64_param = value
        elif isinstance(value, float):
            entry.double_param = value
        elif isinstance(value, str):
            entry.string_param = value
        else:
            raise ClientError(
                f"{where} parameter {key!r}: expected a bool, number or string, got {_kind(value)}"
            )


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def infer_request(
    name: str, version: str, header: dict[str, Any], binary: bytes
) -> pb.ModelInferRequest:
    """The ModelInferRequest a JSON request (and its binary tail) stands for."""
    request = pb.ModelInferRequest(model_name=name, model_version=version)
    request.id = str(header.get("id", ""))
    _parameters(request.parameters, header.get("parameters"), "request")
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ClientError(f"expected 'inputs', a non-empty array of tensors, got {_kind(inputs)}")
    offset = 0
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict):
            raise ClientError(f"inputs[{i}]: expected a tensor object, got {_kind(tensor)}")
        where = f"input {tensor.get('name', i)!r}"
        try:
            shape = [int(d) for d in tensor["shape"]]
            entry = request.inputs.add(name=str(tensor["name"]), datatype=str(tensor["datatype"]))
        except KeyError as error:
            raise ClientError(f"{where}: missing {error.args[0]!r}") from None
        except (TypeError, ValueError):
            raise ClientError(f"{where}: expected a shape of integers") from None
        entry.shape.extend(shape)
        _parameters(entry.parameters, tensor.get("parameters"), where)
        dtype = DATATYPES.get(entry.datatype, (None, None))[0]
        if dtype is None:
            raise ClientError(f"{where}: unsupported datatype {entry.datatype!r}")
        _one_source(tensor, entry.parameters, where)
        if SHARED_MEMORY in entry.parameters:
            continue  # the core reads it from the region
        if "binary_data_size" in entry.parameters:
            size = entry.parameters["binary_data_size"].int64_param
            if size < 0 or offset + size > len(binary):
                raise ClientError(
                    f"{where}: binary_data_size {size} runs past the {len(binary)} bytes "
                    f"after the header (from byte {offset})"
                )
            request.raw_input_contents.append(binary[offset : offset + size])
            offset += size
            del entry.parameters["binary_data_size"]
            continue
        if entry.datatype == BYTES:
            texts = _json_texts(tensor["data"], where)
            if len(texts) != math.prod(shape):
                raise ClientError(
                    f"{where}: shape {shape} needs {math.prod(shape)} strings, got {len(texts)}"
                )
            request.raw_input_contents.append(encode_bytes(np.array(texts, dtype=object)))
            continue
        try:
            array = np.asarray(tensor["data"], dtype=dtype)
        except (TypeError, ValueError, OverflowError) as error:
            raise ClientError(f"{where}: data is not {entry.datatype} values ({error})") from None
        if array.size != math.prod(shape):
            raise ClientError(
                f"{where}: shape {shape} needs {math.prod(shape)} values, got {array.size}"
            )
        request.raw_input_contents.append(array.astype(dtype, copy=False).tobytes())
    if offset != len(binary):
        raise ClientError(
            f"{len(binary) - offset} bytes after the header belong to no input "
            f"(binary_data_size of the inputs adds up to {offset})"
        )
    binary_default = header.get("parameters", {}).get("binary_data_output", False) is True
    for i, output in enumerate(header.get("outputs") or ()):
        if not isinstance(output, dict) or "name" not in output:
            raise ClientError(f"outputs[{i}]: expected an object with a 'name'")
        entry = request.outputs.add(name=str(output["name"]))
        where = f"output {entry.name!r}"
        _parameters(entry.parameters, output.get("parameters"), where)
        if SHARED_MEMORY in entry.parameters:
            binary = entry.parameters.get("binary_data")
            if binary is not None and binary.WhichOneof("parameter_choice") and binary.bool_param:
                raise ClientError(
                    f"{where}: Output can't set both 'shared_memory_region' and 'binary_data'"
                )
        elif "binary_data" not in entry.parameters and binary_default:
            entry.parameters["binary_data"].bool_param = True
    return request


def _one_source(tensor: dict[str, Any], parameters: Any, where: str) -> None:
    """An input's data comes from exactly one place (Triton's wording first)."""
    given = [
        name
        for name, present in (
            ("'data'", "data" in tensor),
            ("'binary_data_size'", "binary_data_size" in parameters),
            ("'shared_memory_region'", SHARED_MEMORY in parameters),
        )
        if present
    ]
    if len(given) != 1:
        raise ClientError(
            f"{where}: Input must set only one of the following fields: 'data', "
            "'binary_data_size' in 'parameters', 'shared_memory_region' in 'parameters'. But "
            + (f"set {' '.join(given)}" if given else "no field is set")
        )


def _json_texts(data: Any, where: str) -> list[bytes]:
    """A BYTES tensor's JSON data (strings, flat or nested in arrays) as UTF-8 elements."""
    texts: list[bytes] = []
    pending = [data]
    while pending:
        item = pending.pop()
        if isinstance(item, list):
            pending.extend(reversed(item))
        elif isinstance(item, str):
            texts.append(item.encode(errors="surrogatepass"))
        else:
            raise ClientError(f"{where}: BYTES data must be strings, got {_kind(item)}")
    return texts


def infer_response(
    request: pb.ModelInferRequest, reply: pb.ModelInferResponse
) -> tuple[dict[str, Any], bytes]:
    """The JSON header of a reply, and the binary outputs that follow it."""
    binary_default = (
        "binary_data_output" in request.parameters
        and request.parameters["binary_data_output"].bool_param
    )
    wanted = {
        o.name: o.parameters["binary_data"].bool_param
        for o in request.outputs
        if "binary_data" in o.parameters
    }
    shared = {o.name for o in request.outputs if SHARED_MEMORY in o.parameters}
    outputs, tail = [], []
    for tensor, raw in zip(reply.outputs, reply.raw_output_contents, strict=True):
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if tensor.name in shared:
            pass  # written into its region: the client reads it there
        elif wanted.get(tensor.name, binary_default):
            entry["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        elif tensor.datatype == BYTES:  # strings, or classification's "value:index:label"
            entry["data"] = [item.decode(errors="replace") for item in decode_bytes(raw)]
        else:
            entry["data"] = np.frombuffer(raw, DATATYPES[tensor.datatype][0]).tolist()
        outputs.append(entry)
    header = {"model_name": reply.model_name, "model_version": reply.model_version}
    if reply.id:
        header["id"] = reply.id
    header["outputs"] = outputs
    return header, b"".join(tail)


# --- the server -------------------------------------------------------------------------


class HttpServer:
    """The REST API and the page, served from a thread of its own."""

    def __init__(
        self,
        core: InferenceCore,
        settings: ServeSettings,
        peers: Peers | None,
        infer_pool: ThreadPoolExecutor,
    ) -> None:
        self.core = core
        self.settings = settings
        self.peers = peers
        self.pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="http")
        self.infer_pool = infer_pool  # shared with gRPC's inference (server.app)
        self._in_flight = 0  # touched on the loop's thread only
        self._token = (
            settings.auth_token.get_secret_value().encode() if settings.auth_token else None
        )
        self.loop = asyncio.new_event_loop()
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --

    def start(self, host: str, port: int, tls: ssl.SSLContext | None, reuse_port: bool) -> int:
        """Listen (in this thread, so that a bind error raises here), then serve."""
        app = web.Application(
            client_max_size=self.settings.max_message_mb * 1024 * 1024,
            middlewares=[self._errors, self._auth, self._cors],
        )
        self._routes(app)
        # aiohttp gives requests in progress shutdown_timeout seconds when it stops.
        self.runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=self.settings.grace
        )
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, host, port, ssl_context=tls, reuse_port=reuse_port or None)
        self.loop.run_until_complete(site.start())
        self.port = int(self.runner.addresses[0][1])
        self._thread = threading.Thread(target=self.loop.run_forever, name="http", daemon=True)
        self._thread.start()
        return self.port

    def stop(self) -> None:
        """Stop listening, give requests in progress --grace seconds, then close."""
        if self.runner is None or self._thread is None:
            return
        grace = self.settings.grace
        future = asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop)
        try:
            future.result(grace + 2.0)
        except Exception:  # a handler stuck past the grace: the process is leaving anyway
            log.warning("HTTP requests still running %.1f s after the grace period", 2.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5.0)
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- middlewares --

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every failure as a status and {"error": "..."}; never a traceback to the client."""
        try:
            return await handler(request)
        except ZooError as error:
            code, message = failure(error, f"HTTP {request.method} {request.path}")
            return _json_error(HTTP_STATUS[code], message)
        except web.HTTPRequestEntityTooLarge:
            sent = request.content_length
            return _json_error(
                413,
                f"request body too large: the limit is {self.settings.max_message_mb} MiB "
                "(--max-message-mb)" + (f", got {sent:,} bytes" if sent is not None else ""),
            )
        except web.HTTPException as error:
            if error.status < 400:
                raise
            return _json_error(error.status, error.reason)
        except Exception as error:
            _, message = failure(error, f"HTTP {request.method} {request.path}")
            return _json_error(500, message)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if (
            self._token is None
            or request.method == "OPTIONS"
            or path.startswith(OPEN_PATHS)
            or path in OPEN_EXACT
            or path.startswith(OPEN_PREFIX_WEB)
        ):
            return await handler(request)
        refusal = bearer_refusal(request.headers.getall("Authorization", []), self._token)
        if refusal is not None:
            return _json_error(401, refusal.replace("metadata", "header"))
        return await handler(request)

    @web.middleware
    async def _cors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = self.settings.http_cors_origin
        if origin is None:
            return await handler(request)
        if request.method == "OPTIONS":
            response: web.StreamResponse = web.Response(status=204)
        else:
            response = await handler(request)
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = (
            f"Authorization, Content-Type, {HEADER_LENGTH}"
        )
        response.headers["Access-Control-Expose-Headers"] = HEADER_LENGTH
        return response

    # -- routes --

    def _routes(self, app: web.Application) -> None:
        model = "/v2/models/{name}"
        version = "/v2/models/{name}/versions/{version}"
        app.add_routes(
            [
                web.get("/v2/health/live", self.live),
                web.get("/v2/health/ready", self.ready),
                web.get("/v2", self.server_metadata),
                web.get("/v2/models/stats", self.statistics),
                *(web.get(base, self.model_metadata) for base in (model, version)),
                *(web.get(f"{base}/ready", self.model_ready) for base in (model, version)),
                *(web.get(f"{base}/config", self.model_config) for base in (model, version)),
                *(web.get(f"{base}/stats", self.statistics) for base in (model, version)),
                *(web.post(f"{base}/infer", self.infer) for base in (model, version)),
                web.post("/v2/repository/index", self.repository_index),
                web.post("/v2/repository/models/{name}/load", self.load),
                web.post("/v2/repository/models/{name}/unload", self.unload),
                *self._shared_memory_routes(),
                web.get("/", self.page),
                web.get("/web/{file}", self.web_file),
            ]
        )

    async def _blocking(
        self, call: Callable[[], Any], pool: ThreadPoolExecutor | None = None
    ) -> Any:
        """A core call on `pool` (the HTTP pool by default); at most --max-in-flight at
        once, as on gRPC."""
        if self._in_flight >= self.settings.max_in_flight:
            raise ResourceExhaustedError(
                f"{self._in_flight} requests in progress, the limit (--max-in-flight)"
            )
        self._in_flight += 1
        try:
            return await self.loop.run_in_executor(pool or self.pool, call)
        finally:
            self._in_flight -= 1

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        ready = self.core.ready
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(_message_json(self.core.server_metadata()))

    async def model_metadata(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        return web.json_response(_message_json(self.core.model_metadata(name, version)))

    async def model_ready(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        # Unknown: 404; known but not ready (loading, or its load failed): 503.
        self.core.model_metadata(name, version)
        return web.json_response({"name": name, "ready": True})

    async def model_config(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        # Triton answers the configuration itself, not a {"config": ...} wrapper.
        return web.json_response(_message_json(self.core.model_config(name, version).config))

    async def statistics(self, request: web.Request) -> web.Response:
        name, version = request.match_info.get("name", ""), request.match_info.get("version", "")

        def gather() -> pb.ModelStatisticsResponse:
            reply = self.core.statistics(name, version)
            if self.peers is None:
                return reply
            asked = pb.ModelStatisticsRequest(name=name, version=version)
            return merge_statistics([reply, *self.peers.statistics(asked)])

        return web.json_response(_message_json(await self._blocking(gather)))

    async def infer(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        body = await request.read()
        header, binary = _split_body(request, body)
        message = infer_request(name, version, header, binary)
        reply = await self._blocking(lambda: self.core.infer(message, None), self.infer_pool)
        out_header, tail = infer_response(message, reply)
        text = json.dumps(out_header).encode()
        if not tail:
            return web.Response(body=text, content_type="application/json")
        return web.Response(
            body=text + tail,
            content_type=BINARY_TYPE,
            headers={HEADER_LENGTH: str(len(text))},
        )

    async def repository_index(self, request: web.Request) -> web.Response:
        body = await _json_body(request, default={})
        ready = body.get("ready", False)
        if not isinstance(ready, bool):
            raise ClientError(f"'ready': expected true or false, got {_kind(ready)}")
        reply = self.core.repository_index(ready)
        return web.json_response([_message_json(m) for m in reply.models])

    async def load(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await _json_body(request, default={})
        message = pb.RepositoryModelLoadRequest(model_name=name)
        _parameters(message.parameters, body.get("parameters"), "load")

        def load() -> None:
            self.core.load(name, message.parameters)
            if self.peers is not None:
                self.peers.load(message)

        await self._blocking(load)
        return web.json_response({})

    async def unload(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        await _json_body(request, default={})

        def unload() -> None:
            self.core.unload(name)
            if self.peers is not None:
                self.peers.unload(pb.RepositoryModelUnloadRequest(model_name=name))

        await self._blocking(unload)
        return web.json_response({})

    # -- shared memory (Triton's REST extensions) --

    def _shared_memory_routes(self) -> list[web.RouteDef]:
        system, cuda = "/v2/systemsharedmemory", "/v2/cudasharedmemory"
        return [
            web.get(f"{system}/status", self.shared_memory_status),
            web.get(f"{system}/region/{{name}}/status", self.shared_memory_status),
            web.post(f"{system}/region/{{name}}/register", self.register_shared_memory),
            web.post(f"{system}/unregister", self.unregister_shared_memory),
            web.post(f"{system}/region/{{name}}/unregister", self.unregister_shared_memory),
            web.get(f"{cuda}/status", self.cuda_shared_memory_status),
            web.get(f"{cuda}/region/{{name}}/status", self.cuda_shared_memory_status),
            web.post(f"{cuda}/region/{{name}}/register", self.register_cuda_shared_memory),
            web.post(f"{cuda}/unregister", self.unregister_cuda_shared_memory),
            web.post(f"{cuda}/region/{{name}}/unregister", self.unregister_cuda_shared_memory),
        ]

    async def shared_memory_status(self, request: web.Request) -> web.Response:
        reply = self.core.shared_memory_status(request.match_info.get("name", ""))
        return web.json_response([_message_json(r) for _, r in sorted(reply.regions.items())])

    async def register_shared_memory(self, request: web.Request) -> web.Response:
        body = await _json_body(request, default={}, any_type=True)
        message = pb.SystemSharedMemoryRegisterRequest(
            name=request.match_info["name"],
            key=_field(body, "key", str, "a string"),
            offset=_field(body, "offset", int, "an integer >= 0", default=0),
            byte_size=_field(body, "byte_size", int, "an integer >= 0"),
        )

        def register() -> None:
            self.core.register_shared_memory(
                message.name, message.key, message.offset, message.byte_size
            )
            if self.peers is not None:
                self.peers.register_shared_memory(message)

        await self._blocking(register)
        return web.json_response({})

    async def unregister_shared_memory(self, request: web.Request) -> web.Response:
        await _json_body(request, default={}, any_type=True)
        message = pb.SystemSharedMemoryUnregisterRequest(name=request.match_info.get("name", ""))

        def unregister() -> None:
            self.core.unregister_shared_memory(message.name)
            if self.peers is not None:
                self.peers.unregister_shared_memory(message)

        await self._blocking(unregister)
        return web.json_response({})

    async def cuda_shared_memory_status(self, request: web.Request) -> web.Response:
        self.core.cuda_shared_memory_status(request.match_info.get("name", ""))
        return web.json_response([])

    async def register_cuda_shared_memory(self, request: web.Request) -> web.Response:
        self.core.register_cuda_shared_memory(request.match_info["name"])
        return web.json_response({})

    async def unregister_cuda_shared_memory(self, request: web.Request) -> web.Response:
        return web.json_response({})  # none is ever registered

    async def page(self, request: web.Request) -> web.StreamResponse:
        return _web_file("index.html")

    async def web_file(self, request: web.Request) -> web.StreamResponse:
        return _web_file(request.match_info["file"])


def _web_file(name: str) -> web.StreamResponse:
    path = WEB / name
    # Only files directly in server/web: the route's {file} holds no "/", and ".." is refused.
    if name.startswith(".") or not path.is_file():
        raise NotFoundError(f"no page file {name!r}")
    content_type = CONTENT_TYPES.get(path.suffix, "application/octet-stream")
    return web.Response(body=path.read_bytes(), content_type=content_type)


def _model(request: web.Request) -> tuple[str, str]:
    return request.match_info["name"], request.match_info.get("version", "")


def _field(body: dict[str, Any], key: str, kind: type, expected: str, default: Any = None) -> Any:
    """body[key], of type `kind` (a bool is no integer), and not negative."""
    value = body.get(key, default)
    if value is None:
        raise ClientError(f"Shared memory register request has no {key!r} field")
    if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
        raise ClientError(f"{key!r}: expected {expected}, got {_kind(value)} {str(value)[:50]}")
    if kind is int and value >= 2**64:
        raise ClientError(f"{key!r}: expected {expected} below 2**64, got {value}")
    return value


def _split_body(request: web.Request, body: bytes) -> tuple[dict[str, Any], bytes]:
    """The JSON header and the binary tail of an infer request."""
    length_text = request.headers.get(HEADER_LENGTH)
    if length_text is None:
        if request.content_type not in JSON_TYPES:
            raise ClientError(
                f"expected Content-Type application/json (or {HEADER_LENGTH} with a binary "
                f"body), got {request.content_type!r}"
            )
        return _parse_json(body), b""
    try:
        length = int(length_text)
    except ValueError:
        raise ClientError(f"{HEADER_LENGTH}: expected a number, got {length_text!r}") from None
    if not 0 <= length <= len(body):
        raise ClientError(f"{HEADER_LENGTH} is {length}, but the body has {len(body)} bytes")
    return _parse_json(body[:length]), body[length:]


def _parse_json(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise ClientError(f"the body is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ClientError(f"expected a JSON object, got {_kind(value)}")
    return value


async def _json_body(
    request: web.Request, default: dict[str, Any], any_type: bool = False
) -> dict[str, Any]:
    """The body as a JSON object; `any_type`: whatever its Content-Type says (as Triton
    reads shared-memory requests: perf_analyzer sends them as form data)."""
    body = await request.read()
    if not body.strip():
        return default
    if not any_type and request.content_type not in JSON_TYPES:
        raise ClientError(f"expected Content-Type application/json, got {request.content_type!r}")
    return _parse_json(body)
