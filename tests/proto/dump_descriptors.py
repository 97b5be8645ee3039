"""Print the field layout of a protobuf module pair as JSON (run as a script).

    python dump_descriptors.py ours|tritonclient

Run in its own process because tritonclient's stubs and ours register the same
`inference.*` names and cannot be imported together.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _message(desc: Any, out: dict[str, Any]) -> None:
    out[desc.full_name] = {
        f.name: [f.number, f.type, f.label, f.message_type.full_name if f.message_type else None]
        for f in desc.fields
    }
    for nested in desc.nested_types:
        _message(nested, out)
    for enum in desc.enum_types:
        out[enum.full_name] = {v.name: v.number for v in enum.values}


def layout(files: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for file in files:
        for enum in file.enum_types_by_name.values():
            out[enum.full_name] = {v.name: v.number for v in enum.values}
        for message in file.message_types_by_name.values():
            _message(message, out)
        for service in file.services_by_name.values():
            for method in service.methods:
                out[method.full_name] = [
                    method.input_type.full_name,
                    method.output_type.full_name,
                    method.client_streaming,
                    method.server_streaming,
                ]
    return out


def main() -> None:
    if sys.argv[1] == "ours":
        from proto import grpc_service_pb2, model_config_pb2
    else:
        from tritonclient.grpc import model_config_pb2
        from tritonclient.grpc import service_pb2 as grpc_service_pb2
    print(json.dumps(layout([model_config_pb2.DESCRIPTOR, grpc_service_pb2.DESCRIPTOR])))


if __name__ == "__main__":
    main()
