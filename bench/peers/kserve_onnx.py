"""A KServe model serving one ONNX file with onnxruntime (CPU, default session options).

`predict` is a plain (synchronous) method, the form KServe's custom-model examples take:
KServe then calls it on its event loop, one request at a time. Inputs arrive decoded by
KServe (raw or typed contents); outputs go back as numpy arrays, which KServe sends as raw
contents over gRPC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import kserve
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse

if TYPE_CHECKING:
    from launch import Ports, Served


class OnnxModel(kserve.Model):
    def __init__(self, served: Served) -> None:
        super().__init__(served.name)
        self.served = served
        self.session: ort.InferenceSession | None = None

    def load(self) -> bool:
        self.session = ort.InferenceSession(
            str(self.served.path), providers=["CPUExecutionProvider"]
        )
        self.ready = True
        return self.ready

    def get_input_types(self) -> list[dict]:
        return self.served.inputs

    def get_output_types(self) -> list[dict]:
        return self.served.outputs

    def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None
    ) -> InferResponse:
        assert self.session is not None
        feed = {tensor.name: tensor.as_numpy() for tensor in payload.inputs}
        results = self.session.run(None, feed)
        outputs = [
            InferOutput(spec["name"], list(array.shape), spec["datatype"], array)
            for spec, array in zip(self.served.outputs, results, strict=True)
        ]
        return InferResponse(payload.id, self.name, outputs)


def serve(models: list[Served], ports: Ports) -> None:
    loaded = [OnnxModel(served) for served in models]
    for model in loaded:
        model.load()
    kserve.ModelServer(grpc_port=ports.grpc, http_port=ports.http).start(loaded)
