"""The modelzoo client: a library (sync and asyncio), the `zoo infer` CLI and the load tester.

from client import ZooClient
with ZooClient("127.0.0.1:8001") as zoo:
    print(zoo.infer("bn_cnn", "digit.png", top_k=3)[0])
"""

from client.aio import AsyncZooClient
from client.channel import RetryPolicy
from client.errors import InferenceServerException
from client.images import load_images
from client.prediction import ImagePrediction, Prediction
from client.protocol import ModelMetadata, ModelStatus
from client.sync import ZooClient

__all__ = [
    "AsyncZooClient",
    "ImagePrediction",
    "InferenceServerException",
    "ModelMetadata",
    "ModelStatus",
    "Prediction",
    "RetryPolicy",
    "ZooClient",
    "load_images",
]
