"""The inference server: KServe v2 / Triton gRPC over onnxruntime.

A pure core that imports no grpc (`codec`, `runtime`, `batcher`, `stats`, `model`,
`manager`, `metrics`, `core`) under a thin gRPC layer (`servicer`, `app`) whose
servicer only translates and maps errors to status codes in one table.
"""
