"""An MLServer runtime serving one ONNX file with onnxruntime (CPU, default session options).

MLServer ships no ONNX runtime (there is no mlserver-onnx package), so this is the custom
runtime its documentation describes: an MLModel whose `load` and `predict` are ours, with
MLServer's NumpyCodec for tensors. The model's metadata (input and output names, datatypes,
shapes) goes into its ModelSettings, where MLServer's ModelMetadata reads it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import onnxruntime as ort
from mlserver import MLModel, MLServer
from mlserver.codecs import NumpyCodec
from mlserver.settings import ModelParameters, ModelSettings, Settings
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor
from mlserver.utils import install_uvloop_event_loop

if TYPE_CHECKING:
    from launch import Ports, Served


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        assert self.settings.parameters is not None
        self.session = ort.InferenceSession(
            self.settings.parameters.uri, providers=["CPUExecutionProvider"]
        )
        self.output_names = [arg.name for arg in self.session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feed = {tensor.name: NumpyCodec.decode_input(tensor) for tensor in payload.inputs}
        results = self.session.run(None, feed)
        outputs = [
            NumpyCodec.encode_output(name, array)
            for name, array in zip(self.output_names, results, strict=True)
        ]
        return InferenceResponse(model_name=self.name, outputs=outputs)


def serve(models: list[Served], ports: Ports) -> None:
    # MLServer's defaults otherwise: one parallel inference worker process, debug on.
    settings = Settings(
        host=ports.host, http_port=ports.http, grpc_port=ports.grpc, metrics_port=ports.metrics
    )
    model_settings = [
        ModelSettings(
            name=served.name,
            implementation=OnnxRuntime,
            parameters=ModelParameters(uri=str(served.path)),
            inputs=[MetadataTensor(**t) for t in served.inputs],
            outputs=[MetadataTensor(**t) for t in served.outputs],
        )
        for served in models
    ]

    async def start() -> None:  # as `mlserver start` does: MLServer needs a running loop
        await MLServer(settings).start(model_settings)

    install_uvloop_event_loop()
    asyncio.run(start())
